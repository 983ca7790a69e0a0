"""The adapters on a CUDA device: compression, healing and checkpoints stay on the GPU.

Skipped without CUDA (CI); run on a GPU machine with ``pytest tests/adapters/test_cuda.py``.
"""

import pytest
import torch

from adapters import compress, count_parameters, heal, load_compressed, save_compressed
from adapters.layer import FACTORED_LINEARS

from conftest import make_tiny_llama

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("method, form", [("activation", "interpolative"), ("activation", "cur"), ("curing", "cur")])
def test_compress_on_cuda_matches_cpu(method, form, calib_tokens, eval_tokens):
    kw = {"reduction": 0.2, "form": form} if method == "activation" else {"rank": 4, "n_layers": 1}
    cpu, rep_cpu = compress(make_tiny_llama(5), calibration=calib_tokens, method=method, progress=False, **kw)
    gpu, rep_gpu = compress(make_tiny_llama(5).cuda(), calibration=calib_tokens, method=method, progress=False, **kw)
    mods = [m for m in gpu.modules() if isinstance(m, FACTORED_LINEARS)]
    assert mods and all(p.is_cuda for m in mods for p in m.parameters())
    assert all(b.is_cuda for m in mods for b in m.buffers())
    assert count_parameters(gpu) == rep_gpu.params_after == rep_cpu.params_after
    assert [m.rank for m in rep_gpu.modules] == [m.rank for m in rep_cpu.modules]
    torch.testing.assert_close(
        _logits(gpu, eval_tokens.cuda()).cpu(), _logits(cpu, eval_tokens), rtol=1e-3, atol=1e-3
    )


@pytest.mark.parametrize("form", ["interpolative", "cur"])
def test_save_load_and_heal_on_cuda(form, tmp_path, calib_tokens, eval_tokens):
    model, _ = compress(make_tiny_llama(6).cuda(), calibration=calib_tokens, reduction=0.2, form=form, progress=False)
    save_compressed(model, tmp_path / "ckpt")
    back = load_compressed(tmp_path / "ckpt", device="cuda")
    ids = eval_tokens.cuda()
    torch.testing.assert_close(_logits(back, ids), _logits(model, ids), rtol=0, atol=0)
    core = "U" if form == "cur" else "P"
    before = [getattr(m, core).detach().clone() for m in back.modules() if isinstance(m, FACTORED_LINEARS)]
    result = heal(back, data=calib_tokens, steps=3, batch_size=4, seqlen=16, progress=False)
    after = [getattr(m, core) for m in back.modules() if isinstance(m, FACTORED_LINEARS)]
    assert result.steps_run == 3
    assert all(a.is_cuda for a in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))


@pytest.mark.parametrize("where", ["cpu", "disk"])
def test_compressed_checkpoint_loads_offloaded_to_cpu_or_disk(where, tmp_path, calib_tokens, eval_tokens):
    """Issue 24: offloaded factors (on meta, held by accelerate's hooks) were taken for missing ones."""
    from transformers import AutoModelForCausalLM

    model, _ = compress(make_tiny_llama(5), calibration=calib_tokens, reduction=0.2, progress=False)
    model.save_pretrained(tmp_path / "ckpt")
    device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": 0, "lm_head": 0,
                  "model.layers.0": where, "model.layers.1": 0}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", device_map=device_map,
                                                  offload_folder=tmp_path / "offload")
    assert loaded.model.layers[0].self_attn.q_proj.P.is_meta  # offloaded, read per forward pass
    torch.testing.assert_close(_logits(loaded, eval_tokens.cuda()).cpu(), _logits(model, eval_tokens),
                               rtol=1e-3, atol=1e-3)
