import copy
import json
import subprocess
import sys

import pytest
import torch

from adapters import compress, count_parameters, merge
from adapters.layer import FACTORED_LINEARS

from conftest import make_tiny_llama, one_thread_logits
from families import FAMILIES, calibration_tokens, make_tiny

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
    quantizer and its tensors keep the file's alignment (compressed checkpoints get aligned copies)."""
    return one_thread_logits(model, TOKENS)


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


def _load_without_adapters(folders: dict, tokens, tmp_path) -> dict:
    """``{family: logits}`` of each merged folder loaded by its family's own class in a new
    process that never imports adapters; fails with the process's error output."""
    torch.save(tokens, tmp_path / "tokens.pt")
    code = (
        "import sys, torch, transformers\n"
        f"folders = {folders!r}\n"
        f"tokens = torch.load({str(tmp_path / 'tokens.pt')!r})\n"
        "out = {}\n"
        "for family, (cls, folder) in folders.items():\n"
        "    model, info = getattr(transformers, cls).from_pretrained(folder, output_loading_info=True)\n"
        "    bad = {k: v for k, v in info.items() if v}\n"
        "    if bad:\n"
        "        raise SystemExit(f'{family}: {cls} loaded the merged folder with {bad}')\n"
        "    with torch.no_grad():\n"
        "        out[family] = model(tokens).logits\n"
        "assert 'adapters' not in sys.modules and 'curlinalg' not in sys.modules\n"
        f"torch.save(out, {str(tmp_path / 'logits.pt')!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp_path / "logits.pt")


def test_every_family_merges_into_a_folder_its_own_class_loads(tmp_path):
    """Issue 24: GPT-2's Conv1D slots came back as nn.Linear (transposed weights: a size
    mismatch), MoE experts as per-expert tensors (random experts after loading)."""
    from adapters import InterpolativeConfig

    tokens = torch.randint(3, 128, (2, 16), generator=torch.Generator().manual_seed(2))
    folders, expected = {}, {}
    for family, (_, _, model_cls, _) in FAMILIES.items():
        model, _ = compress(make_tiny(family), InterpolativeConfig(reduction=0.2), calibration=calibration_tokens(),
                            progress=False)
        with torch.no_grad():
            expected[family] = model(tokens).logits
        merge(model)
        assert type(model).__name__ == model_cls
        model.save_pretrained(tmp_path / family)
        folders[family] = (model_cls, str(tmp_path / family))
    loaded = _load_without_adapters(folders, tokens, tmp_path)
    for family, logits in expected.items():
        torch.testing.assert_close(loaded[family], logits, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, family=family: f"{family}: {m}")


def test_dequantize_gives_gpt2_its_conv1d_layers(tmp_path):
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    model, report = compress(make_tiny("gpt2"), calibration=calibration_tokens(), reduction=0.2, progress=False)
    with torch.no_grad():
        expected = model(TOKENS).logits
    model.save_pretrained(tmp_path / "compressed")
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "compressed").dequantize()
    assert report.modules and all(type(dense.get_submodule(m.name)) is Conv1D for m in report.modules)
    dense.save_pretrained(tmp_path / "dense")
    loaded = _load_without_adapters({"gpt2": ("GPT2LMHeadModel", str(tmp_path / "dense"))}, TOKENS, tmp_path)
    torch.testing.assert_close(loaded["gpt2"], expected, rtol=1e-4, atol=1e-5)
