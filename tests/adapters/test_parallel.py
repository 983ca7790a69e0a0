"""adapters._parallel: side-by-side single-threaded tasks, results in order, threads restored."""

import threading

import pytest
import torch

from adapters._parallel import map_modules, workers_for


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_results_in_order_one_torch_thread_each(workers):
    before = torch.get_num_threads()
    seen = []

    def task(i):
        seen.append((torch.get_num_threads(), threading.get_ident()))
        return i * i

    assert map_modules(task, range(7), workers=workers) == [i * i for i in range(7)]
    assert {t for t, _ in seen} == {1}
    assert torch.get_num_threads() == before
    if workers == 1:
        assert {ident for _, ident in seen} == {threading.get_ident()}


def test_side_by_side_when_asked():
    barrier = threading.Barrier(2, timeout=10)  # passes only if two tasks run at once

    def task(i):
        barrier.wait()
        return i

    assert map_modules(task, [0, 1], workers=2) == [0, 1]


def test_first_error_propagates_and_threads_restored():
    before = torch.get_num_threads()

    def task(i):
        if i == 2:
            raise KeyError("task 2")
        return i

    with pytest.raises(KeyError, match="task 2"):
        map_modules(task, range(5), workers=2)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_workers_checked(bad):
    with pytest.raises(ValueError, match="workers must be a positive int"):
        workers_for(bad)


def test_workers_default_follows_torch():
    assert workers_for(None) == torch.get_num_threads()
    assert workers_for(3) == 3
