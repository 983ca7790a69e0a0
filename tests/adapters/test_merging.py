import copy
import json

import pytest
import torch

from adapters import compress, count_parameters, merge
from adapters.layer import FACTORED_LINEARS

from conftest import make_tiny_llama

TOKENS = torch.randint(1, 128, (2, 16), generator=torch.Generator().manual_seed(2))
CALIB = torch.randint(1, 128, (8, 32), generator=torch.Generator().manual_seed(1))


_CACHE = {}


def _compressed(form="interpolative", dtype=None):
    """A fresh copy of one compression per (form, dtype): merge changes the model it is given."""
    if (form, dtype) not in _CACHE:
        _CACHE[form, dtype] = compress(make_tiny_llama(dtype=dtype), calibration=CALIB, reduction=0.15, form=form,
                                       progress=False)
    model, report = _CACHE[form, dtype]
    return copy.deepcopy(model), report


def _logits(model):
    """On one torch thread: a merged model is dense, so transformers loads it without our
    quantizer, and its tensors stay views into the file at any alignment, which some BLAS
    kernels split their work by on several threads (compressed checkpoints get aligned copies)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return model(TOKENS).logits
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("form", ["cur", "interpolative"])
def test_merge_folds_every_layer_into_linear(form, tmp_path):
    from transformers import AutoModelForCausalLM

    dense_count = count_parameters(make_tiny_llama())
    model, report = _compressed(form)
    before = _logits(model)
    assert merge(model) is model
    assert not any(isinstance(m, FACTORED_LINEARS) for m in model.modules())
    assert all(type(model.get_submodule(m.name)) is torch.nn.Linear for m in report.modules)
    assert count_parameters(model) == dense_count
    torch.testing.assert_close(_logits(model), before, rtol=1e-4, atol=1e-5)
    model.save_pretrained(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(tmp_path)), _logits(model))


def test_merge_keeps_bf16_and_rounds_once():
    model, report = _compressed(dtype=torch.bfloat16)
    layer = model.get_submodule(report.modules[0].name)
    with torch.no_grad():
        reference = copy.deepcopy(layer).float().weight_product().to(torch.bfloat16)
    merge(model)
    merged = model.get_submodule(report.modules[0].name)
    assert merged.weight.dtype == torch.bfloat16
    assert torch.equal(merged.weight, reference)


def test_merge_without_compressed_layers_is_a_no_op():
    model = make_tiny_llama()
    before = _logits(model)
    assert torch.equal(_logits(merge(model)), before)


def test_merge_a_loaded_checkpoint_gives_a_plain_one(tmp_path):
    from transformers import AutoModelForCausalLM

    model, _ = _compressed()
    model.save_pretrained(tmp_path / "compressed")
    loaded = merge(AutoModelForCausalLM.from_pretrained(tmp_path / "compressed"))
    assert getattr(loaded, "hf_quantizer", None) is None
    loaded.save_pretrained(tmp_path / "plain")
    assert "quantization_config" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "plain")), _logits(model),
                               rtol=1e-4, atol=1e-5)


def test_transformers_dequantize_merges(tmp_path):
    from transformers import AutoModelForCausalLM

    model, _ = _compressed()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).dequantize()
    assert not any(isinstance(m, FACTORED_LINEARS) for m in loaded.modules())
    assert getattr(loaded, "hf_quantizer", None) is None
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=1e-4, atol=1e-5)
