import math
from types import SimpleNamespace

import pytest
import torch

from adapters.distillation import Loss, lr_at


def test_learning_rate_schedule():
    lrs = [lr_at(s, lr=1.0, steps=10, warmup=2, min_lr_ratio=0.1) for s in range(10)]
    assert lrs[:2] == [0.5, 1.0]
    assert lrs[2] == pytest.approx(1.0) and all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert lr_at(10, lr=1.0, steps=10, warmup=2, min_lr_ratio=0.1) == pytest.approx(0.1)
    mid = lr_at(6, lr=1.0, steps=10, warmup=2, min_lr_ratio=0.0)
    assert mid == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_loss_is_the_weighted_sum_of_its_parts():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 7, (2, 5), generator=gen)
    student = SimpleNamespace(logits=torch.randn(2, 5, 7, generator=gen),
                              hidden_states=[torch.randn(2, 5, 3, generator=gen) for _ in range(3)])
    teacher = SimpleNamespace(logits=torch.randn(2, 5, 7, generator=gen),
                              hidden_states=[torch.randn(2, 5, 3, generator=gen) for _ in range(3)])
    total, parts = Loss(alpha=0.25, temperature=2.0, hidden_weight=0.5)(ids, student, teacher)
    assert set(parts) == {"ce", "kl", "hidden"}
    assert float(total) == pytest.approx(float(0.75 * parts["ce"] + 0.25 * parts["kl"] + 0.5 * parts["hidden"]))
    ce = torch.nn.functional.cross_entropy(student.logits[:, :-1].reshape(-1, 7), ids[:, 1:].reshape(-1))
    assert float(parts["ce"]) == pytest.approx(float(ce))
    _, only_kl = Loss(alpha=1.0, temperature=1.0, hidden_weight=0.0)(ids, student, teacher)
    assert set(only_kl) == {"kl"} and float(only_kl["kl"]) > 0
    _, same = Loss(alpha=1.0, temperature=1.0, hidden_weight=0.0)(ids, student, student)
    assert float(same["kl"]) == pytest.approx(0.0, abs=1e-6)
