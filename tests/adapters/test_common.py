"""adapters._common: parameter counting and memory release."""

import ctypes.util
import sys

import pytest

from adapters._common import count_parameters, release_memory

from conftest import make_tiny_llama


def test_count_parameters_counts_tied_weights_once():
    untied, tied = make_tiny_llama(tie=False), make_tiny_llama(tie=True)
    assert count_parameters(untied) - count_parameters(tied) == untied.lm_head.weight.numel()


@pytest.mark.skipif(not sys.platform.startswith("linux") or not ctypes.util.find_library("c"), reason="glibc only")
def test_release_memory_trims_the_heap_on_glibc():
    assert release_memory() is True
