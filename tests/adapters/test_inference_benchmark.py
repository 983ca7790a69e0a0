"""Smoke test of benchmarks/inference_cpu.py's measuring functions on a tiny compressed model."""

import sys
from pathlib import Path

import torch

from adapters import compress

from conftest import make_tiny_llama

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import inference_cpu  # noqa: E402


def test_measure_profile_and_memory(calib_tokens):
    dense = make_tiny_llama(3)
    small, _ = compress(make_tiny_llama(3), calibration=calib_tokens, reduction=0.2, progress=False)
    models = {"dense": dense, "compressed": small}
    ids = torch.randint(0, 128, (1, 24), generator=torch.Generator().manual_seed(0))
    res = inference_cpu.measure(models, ids, ids[:, :4], new_tokens=3, repeats=2)
    for r in res.values():
        assert len(r["prefill_s"]) == len(r["decode_s"]) == 2 and len(r["generated"]) == 3
        assert r["prefill_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0
    mem = {name: inference_cpu.weight_bytes(m) for name, m in models.items()}
    assert mem["compressed"]["parameters"] < mem["dense"]["parameters"]
    prof = inference_cpu.profile_models(models, ids, ids[:, :4], new_tokens=2)
    kinds = prof["compressed"]["prefill_modules_s"]
    assert kinds["factored linears"] > 0 and kinds["attention"] > 0 and kinds["lm_head"] > 0
    assert "factored linears" not in prof["dense"]["prefill_modules_s"]
    assert prof["compressed"]["prefill_ops"] and prof["compressed"]["decode_ops"]
    assert all(d["excess_s"] > 0 for d in inference_cpu.limiting(prof, "dense", "compressed", "decode"))


def test_previous_forward_is_the_same_map_without_the_views(calib_tokens):
    """``--before`` compares layouts, not maps: the previous forward gives the same logits, and its
    copy of the model returns no transposed view."""
    from adapters.layer import TRANSPOSED_FROM

    small, _ = compress(make_tiny_llama(3), calibration=calib_tokens, reduction=0.2, progress=False)
    before = inference_cpu.with_previous_forward(small)
    assert any(getattr(m, "feature_major_output", False) for m in small.modules())
    assert not any(getattr(m, "feature_major_output", False) for m in before.modules())
    for length in (5, TRANSPOSED_FROM):
        ids = torch.randint(0, 128, (1, length), generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            torch.testing.assert_close(before(ids).logits, small(ids).logits, rtol=1e-5, atol=1e-5)


def test_compile_models_traces_dense_and_compressed_whole(calib_tokens):
    """``--compile``: each model is compiled by its warm-up with no graph break, decodes the
    eager model's tokens, and is timed like the others (Dynamo's eager backend: no C++ build)."""
    import torch._dynamo

    dense = make_tiny_llama(3)
    small, _ = compress(make_tiny_llama(3), calibration=calib_tokens, reduction=0.2, progress=False)
    models = {"dense": dense, "compressed": small}
    ids = torch.randint(0, 128, (1, 24), generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    compiled, info = inference_cpu.compile_models(models, ids, ids[:, :4], backend="eager")
    assert sorted(compiled) == ["compressed" + inference_cpu.COMPILED, "dense" + inference_cpu.COMPILED]
    for name, m in models.items():
        got = info[name + inference_cpu.COMPILED]
        assert 1 <= got["graphs"] < torch._dynamo.config.recompile_limit
        assert got["graph_breaks"] == 0 and got["compile_seconds"] > 0
        assert inference_cpu.decode(compiled[name + inference_cpu.COMPILED], ids[:, :4], 3)[1] == \
            inference_cpu.decode(m, ids[:, :4], 3)[1]
    res = inference_cpu.measure(compiled, ids, ids[:, :4], new_tokens=3, repeats=1)
    assert all(r["prefill_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0 for r in res.values())
