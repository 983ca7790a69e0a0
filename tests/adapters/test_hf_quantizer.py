"""Compressed checkpoints through transformers' quantizer registry (adapters.hf_quantizer)."""

import copy
import json
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from adapters import CheckpointMismatchError, CompressedCheckpointConfig, compress, count_parameters
from adapters.hf_quantizer import QUANT_METHOD, WITHOUT_ADAPTERS, CompressedQuantizer
from adapters.layer import FACTORED_LINEARS, CURLinear, InterpolativeLinear

from conftest import make_tiny_classifier, make_tiny_llama, save_char_tokenizer

transformers = pytest.importorskip("transformers")
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: E402

TOKENS = torch.randint(1, 128, (2, 16), generator=torch.Generator().manual_seed(2))
CALIB = torch.randint(1, 128, (8, 32), generator=torch.Generator().manual_seed(1))
AUTO = {"causal": AutoModelForCausalLM, "classifier": AutoModelForSequenceClassification}
_CACHE = {}


def _compressed(kind, dtype, form="interpolative"):
    """One compression per (kind, dtype, form) for the whole module; tests get the same model."""
    key = (kind, dtype, form)
    if key not in _CACHE:
        model = make_tiny_llama(dtype=dtype) if kind == "causal" else make_tiny_classifier(dtype=dtype)
        model, report = compress(model, calibration=CALIB, reduction=0.15, form=form, progress=False)
        _CACHE[key] = (model, report)
    return _CACHE[key]


def _out(model, tokens=TOKENS):
    with torch.no_grad():
        out = model(tokens)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _stored_dtypes(path):
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}


def _edit_config(path, fn):
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["causal", "classifier"])
def test_save_pretrained_from_pretrained_round_trip(kind, dtype, tmp_path):
    model, report = _compressed(kind, dtype)
    model.save_pretrained(tmp_path)
    record = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert record["quant_method"] == QUANT_METHOD and record["format_version"] == 2
    assert set(record["modules"]) == {m.name for m in report.modules}
    assert record["compression"] == model.compression_config.to_dict()
    assert _stored_dtypes(tmp_path) == {"BF16" if dtype == torch.bfloat16 else "F32", "I64"}
    loaded = AUTO[kind].from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    assert {p.dtype for p in loaded.parameters()} == {dtype}
    assert sum(isinstance(m, FACTORED_LINEARS) for m in loaded.modules()) == len(report.modules)
    assert count_parameters(loaded) == count_parameters(model) == report.params_after
    assert loaded.compression_config == model.compression_config
    assert torch.equal(_out(loaded), _out(model))


def test_cur_form_round_trip_keeps_indices(tmp_path):
    model, report = _compressed("causal", torch.float32, form="cur")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    pairs = [(a, b) for a, b in zip(model.modules(), loaded.modules()) if isinstance(a, CURLinear)]
    assert len(pairs) == len(report.modules)
    assert all(torch.equal(a.rows, b.rows) and torch.equal(a.cols, b.cols) for a, b in pairs)
    assert torch.equal(_out(loaded), _out(model))


def test_loaded_model_saves_the_same_record_again(tmp_path):
    model, _ = _compressed("causal", torch.float32)
    model.save_pretrained(tmp_path / "a")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    assert isinstance(loaded.hf_quantizer, CompressedQuantizer)
    loaded.save_pretrained(tmp_path / "b")
    first, second = (json.loads((tmp_path / p / "config.json").read_text())["quantization_config"] for p in "ab")
    assert first == second
    assert torch.equal(_out(AutoModelForCausalLM.from_pretrained(tmp_path / "b")), _out(model))


def test_sharded_checkpoint_with_device_map(tmp_path):
    model, _ = _compressed("causal", torch.float32)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cpu")
    assert torch.equal(_out(loaded), _out(model))


def test_explicit_dtype_on_load_is_applied(tmp_path):
    model, _ = _compressed("causal", torch.bfloat16)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert torch.allclose(_out(loaded), _out(model).float(), atol=0.1)


def test_base_model_loads_a_head_checkpoint(tmp_path):
    model, report = _compressed("causal", torch.float32)
    model.save_pretrained(tmp_path)
    base = AutoModel.from_pretrained(tmp_path)
    assert sum(isinstance(m, FACTORED_LINEARS) for m in base.modules()) == len(report.modules)
    assert torch.equal(_out(base), _out(model.model))


def test_generation_settings_are_kept(tmp_path):
    model, _ = _compressed("causal", torch.float32)
    gen = model.generation_config
    saved = (gen.eos_token_id, gen.do_sample, gen.temperature)
    gen.eos_token_id, gen.do_sample, gen.temperature = [5, 7], True, 0.6
    try:
        model.save_pretrained(tmp_path)
    finally:
        gen.eos_token_id, gen.do_sample, gen.temperature = saved
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    got = loaded.generation_config
    assert (got.eos_token_id, got.do_sample, got.temperature) == ([5, 7], True, 0.6)
    out = loaded.generate(TOKENS[:1, :4], max_new_tokens=3, do_sample=False, eos_token_id=None)
    assert out.shape == (1, 7)


def test_dense_model_has_no_record(tmp_path):
    make_tiny_llama().save_pretrained(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())


def test_record_round_trips_and_refuses_unknown_fields():
    model, _ = _compressed("causal", torch.float32)
    rec = CompressedCheckpointConfig.from_model(model)
    assert CompressedCheckpointConfig.from_dict(rec.to_dict()) == rec
    with pytest.raises(CheckpointMismatchError, match=r"unknown field\(s\) \['sparsity'\]"):
        CompressedCheckpointConfig.from_dict(rec.to_dict() | {"sparsity": 0.5})


# Bad input: each case edits a saved checkpoint and expects a message naming the module.

@pytest.fixture
def saved(tmp_path):
    model, report = _compressed("causal", torch.float32)
    model.save_pretrained(tmp_path)
    return tmp_path, report.modules[0].name


def _modules(cfg):
    return cfg["quantization_config"]["modules"]


def test_refuses_record_rank_that_disagrees_with_tensors(saved):
    path, name = saved
    _edit_config(path, lambda cfg: _modules(cfg)[name].update(rank=_modules(cfg)[name]["rank"] - 1))
    with pytest.raises(CheckpointMismatchError, match=rf"{name}: the record says .* rank .*R stored"):
        AutoModelForCausalLM.from_pretrained(path)


def test_refuses_record_shape_that_disagrees_with_architecture(saved):
    path, name = saved
    _edit_config(path, lambda cfg: _modules(cfg)[name].update(in_features=_modules(cfg)[name]["in_features"] + 1))
    with pytest.raises(CheckpointMismatchError, match=rf"{name}: the record says a \d+x\d+ weight, the architecture"):
        AutoModelForCausalLM.from_pretrained(path)


def test_refuses_unknown_format_version(saved):
    path, _ = saved
    _edit_config(path, lambda cfg: cfg["quantization_config"].update(format_version=3))
    with pytest.raises(CheckpointMismatchError, match="format_version 3 is not supported"):
        AutoModelForCausalLM.from_pretrained(path)


def test_refuses_unknown_compression_config_version(saved):
    path, _ = saved
    _edit_config(path, lambda cfg: cfg["quantization_config"]["compression"].update(version=99))
    with pytest.raises(CheckpointMismatchError, match="'compression' cannot be read: .*version 99"):
        AutoModelForCausalLM.from_pretrained(path)


@pytest.mark.parametrize("form", ["interpolative", "cur"])
def test_refit_options_round_trip_through_the_checkpoint(form, tmp_path):
    """A model compressed with the sequential refit saves and loads; its record carries the
    options (version 3 for the interpolative form, 2 for C U R), and a version-1 record of the same
    checkpoint reads with the refit off."""
    from adapters import config_from_dict
    from adapters.configs import CURConfig, InterpolativeConfig

    cls = InterpolativeConfig if form == "interpolative" else CURConfig
    cfg = cls(reduction=0.15, sequential=True, mix=0.75, refit_ridge=1e-2, passes=2)
    model, report = compress(make_tiny_llama(), cfg, calibration=CALIB, progress=False)
    model.save_pretrained(tmp_path)
    record = json.loads((tmp_path / "config.json").read_text())["quantization_config"]["compression"]
    assert record == cfg.to_dict() and record["version"] == {"interpolative": 3, "cur": 2}[form]
    assert (record["mix"], record["refit_ridge"], record["passes"]) == (0.75, 1e-2, 2)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.compression_config == cfg and config_from_dict(record) == cfg
    assert count_parameters(loaded) == report.params_after
    assert torch.equal(_out(loaded), _out(model))

    def as_version_1(c):
        comp = c["quantization_config"]["compression"]
        comp.update(version=1, sequential=False)
        for name in ("mix", "refit_ridge", "passes"):
            del comp[name]

    _edit_config(tmp_path, as_version_1)
    old = AutoModelForCausalLM.from_pretrained(tmp_path).compression_config
    assert old == cls(reduction=0.15, sequential=False) and (old.mix, old.refit_ridge, old.passes) == (0.0, 0.0, 1)


def test_refuses_unknown_form(saved):
    path, name = saved
    _edit_config(path, lambda cfg: _modules(cfg)[name].update(form="tucker"))
    with pytest.raises(CheckpointMismatchError, match=rf"{name}: .*form 'tucker', which names no layer class"):
        AutoModelForCausalLM.from_pretrained(path)


def test_refuses_module_missing_from_architecture(saved):
    path, name = saved
    _edit_config(path, lambda cfg: _modules(cfg).update({"model.layers.0.mlp.nope": dict(_modules(cfg)[name])}))
    with pytest.raises(CheckpointMismatchError, match="model.layers.0.mlp.nope: .*no linear layer"):
        AutoModelForCausalLM.from_pretrained(path)


def test_refuses_factored_tensors_the_record_omits(saved):
    path, name = saved
    _edit_config(path, lambda cfg: _modules(cfg).pop(name))
    with pytest.raises(CheckpointMismatchError, match=rf"does not list: \['{name}'\]"):
        AutoModelForCausalLM.from_pretrained(path)


def _edit_tensor(path, key, fn):
    from safetensors.torch import load_file, save_file

    weights = load_file(str(path / "model.safetensors"))
    weights[key] = fn(weights[key].clone())
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})


def _set(t, i, value):
    t[i] = value
    return t


def test_refuses_repeated_interpolative_rows(saved):
    path, name = saved
    _edit_tensor(path, f"{name}.rows", lambda t: _set(t, 0, t[1]))
    with pytest.raises(CheckpointMismatchError, match=rf"{name}: .*not a split of range"):
        AutoModelForCausalLM.from_pretrained(path)


@pytest.mark.parametrize("bad", ["out_of_range", "repeated"])
def test_refuses_bad_cur_indices(bad, tmp_path):
    model, report = _compressed("causal", torch.float32, form="cur")
    model.save_pretrained(tmp_path)
    name = report.modules[0].name
    size = model.get_submodule(name).in_features
    _edit_tensor(tmp_path, f"{name}.cols", lambda t: _set(t, 0, size if bad == "out_of_range" else t[1]))
    with pytest.raises(CheckpointMismatchError, match=rf"{name}: the stored 'cols' indices .* distinct values in \[0, {size}\)"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_interpolative_layers_are_built_on_meta(saved, monkeypatch):
    """Loading never allocates a compressed layer (nor its dense weight) off the meta device."""
    path, _ = saved
    devices = []
    original = InterpolativeLinear.empty.__func__

    def spy(cls, *args, **kwargs):
        layer = original(cls, *args, **kwargs)
        devices.append(layer.R.device.type)
        return layer

    monkeypatch.setattr(InterpolativeLinear, "empty", classmethod(spy))
    AutoModelForCausalLM.from_pretrained(path)
    assert devices and set(devices) == {"meta"}


def _with_quantizer(model, config, quantized):
    """``model`` as transformers leaves it after loading with another quantizer's record."""
    from types import SimpleNamespace

    model.hf_quantizer = SimpleNamespace(quantization_config=config, quantized=quantized)
    model.config.quantization_config = config
    return model


def test_a_model_loaded_from_gguf_and_dequantized_compresses_and_round_trips(tmp_path):
    """The README's demo model: transformers de-quantizes GGUF on CPU but keeps its record."""
    from transformers import GgufConfig

    model = _with_quantizer(make_tiny_llama(), GgufConfig(gguf_file="x.gguf"), quantized={})
    model, _ = compress(model, calibration=CALIB, reduction=0.15, progress=False)
    assert isinstance(model.hf_quantizer, CompressedQuantizer)
    model.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(_out(back), _out(model), rtol=0, atol=0)


@pytest.mark.parametrize("case", ["gguf blocks kept", "bitsandbytes"])
def test_a_model_with_quantized_layers_is_refused_before_work(case, monkeypatch):
    from transformers import BitsAndBytesConfig, GgufConfig

    config, quantized = ((GgufConfig(gguf_file="x.gguf"), {"model.layers.0.mlp.down_proj": "q4_0"})
                         if case == "gguf blocks kept" else (BitsAndBytesConfig(load_in_8bit=True), None))
    model = _with_quantizer(make_tiny_llama(), config, quantized)
    monkeypatch.setattr("adapters.planning.prepare_calibration", lambda *a, **k: pytest.fail("calibration ran"))
    with pytest.raises(ValueError, match="layers are quantized .*before compressing"):
        compress(model, calibration=CALIB, reduction=0.15, progress=False)
    assert not any(isinstance(m, FACTORED_LINEARS) for m in model.modules())


def test_rebuild_buffers_gives_what_loading_builds(tmp_path):
    """``model.to(bf16)`` casts the rotary ``inv_freq`` (non-persistent), which from_pretrained
    rebuilds in float32: rebuilt, the buffers are the loaded model's, bit for bit."""
    from adapters.hf_quantizer import rebuild_buffers

    model = make_tiny_llama().to(torch.bfloat16)
    assert model.model.rotary_emb.inv_freq.dtype == torch.bfloat16
    assert rebuild_buffers(model) == ["model.rotary_emb.inv_freq", "model.rotary_emb.original_inv_freq"]
    model.save_pretrained(tmp_path / "dense")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")
    for (name, a), (_, b) in zip(model.named_buffers(), loaded.named_buffers()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert rebuild_buffers(model) == []
    assert rebuild_buffers(torch.nn.Linear(2, 2)) == []


def test_loaded_tensors_are_aligned(calib_tokens, tmp_path):
    """Loaded tensors are views into the file at any byte offset; the loaded model gets aligned
    copies, as the saved one had (some BLAS kernels split their work by alignment)."""
    model, _ = compress(make_tiny_llama(), calibration=calib_tokens, reduction=0.2, progress=False)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert all(t.data_ptr() % 64 == 0 for t in [*loaded.parameters(), *loaded.buffers()])


def test_loading_by_path_without_adapters_stops_before_reading_weights(tmp_path):
    """Issue 24: without `import adapters`, transformers skipped the unknown quant_method and
    filled the factored layers with random weights. Every loader must stop instead, naming
    the import, before it reads a tensor: the weights file here is garbage, so a loader that
    read it would fail with another error."""
    model, _ = _compressed("causal", torch.float32)
    model.save_pretrained(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["transformers_weights"] == WITHOUT_ADAPTERS
    shutil.copytree(tmp_path / "ckpt", tmp_path / "garbage")
    (tmp_path / "garbage" / "model.safetensors").write_bytes(b"not a safetensors file")
    save_char_tokenizer(tmp_path / "garbage")
    code = (
        "import sys\n"
        "from transformers import AutoModelForCausalLM, LlamaForCausalLM, pipeline\n"
        f"path = {str(tmp_path / 'garbage')!r}\n"
        "loaders = {'auto': lambda: AutoModelForCausalLM.from_pretrained(path),\n"
        "           'class': lambda: LlamaForCausalLM.from_pretrained(path),\n"
        "           'pipeline': lambda: pipeline('text-generation', model=path)}\n"
        "for name, load in loaders.items():\n"
        "    try:\n"
        "        load()\n"
        "        print(name, 'LOADED')\n"
        "    except Exception as exc:\n"
        "        print(name, type(exc).__name__, ' '.join(str(exc).split()))\n"
        "assert 'adapters' not in sys.modules and 'curlinalg' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.split()[:1] in (["auto"], ["class"], ["pipeline"])]
    assert len(lines) == 3, done.stdout
    for line in lines:
        assert "FileNotFoundError" in line and "run import adapters before from_pretrained" in line, line


def test_loading_with_adapters_forgets_the_name_and_saving_writes_it_again(tmp_path):
    model, _ = _compressed("causal", torch.float32)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert getattr(loaded.config, "transformers_weights", None) is None
    assert torch.equal(_out(loaded), _out(model))
    for k, twin in enumerate((copy.deepcopy(loaded), pickle.loads(pickle.dumps(loaded)))):  # saves as the original
        twin.save_pretrained(tmp_path / f"again{k}")
        written = json.loads((tmp_path / f"again{k}" / "config.json").read_text())
        assert written["transformers_weights"] == WITHOUT_ADAPTERS
        assert torch.equal(_out(AutoModelForCausalLM.from_pretrained(tmp_path / f"again{k}")), _out(model))
    loaded.dequantize().save_pretrained(tmp_path / "dense")
    assert "transformers_weights" not in json.loads((tmp_path / "dense" / "config.json").read_text())
    make_tiny_llama().save_pretrained(tmp_path / "stock")
    assert "transformers_weights" not in json.loads((tmp_path / "stock" / "config.json").read_text())


def _offload_map(where):
    """Layer 0 and the head offloaded to ``where``, the rest resident on the CPU."""
    return {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "model.layers.1": "cpu",
            "model.layers.0": where, "lm_head": where}


@pytest.mark.parametrize("buffers", [False, True], ids=["weights", "weights-and-indices"])
def test_offloaded_loading_gives_the_in_memory_logits(buffers, tmp_path):
    """Issue 24: from_pretrained(..., device_map=..., offload_folder=...) of a compressed
    checkpoint raised 'tensors [...] were not in the checkpoint' for offloaded factors."""
    pytest.importorskip("accelerate")
    model, _ = _compressed("causal", torch.float32)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", device_map=_offload_map("disk"),
                                                  offload_folder=tmp_path / "offload", offload_buffers=buffers)
    q = loaded.model.layers[0].self_attn.q_proj
    assert isinstance(q, InterpolativeLinear) and q.P.is_meta and q.rows.is_meta == buffers  # really offloaded
    assert torch.equal(_out(loaded), _out(model))
    loaded.save_pretrained(tmp_path / "again")  # an offloaded model saves its offloaded factors too
    assert torch.equal(_out(AutoModelForCausalLM.from_pretrained(tmp_path / "again")), _out(model))


def test_auto_device_map_with_disk_offload_loads(tmp_path):
    pytest.importorskip("accelerate")
    model, _ = _compressed("causal", torch.float32)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", device_map="auto", max_memory={"cpu": "20KB"},
                                                  offload_folder=tmp_path / "offload")
    assert "disk" in loaded.hf_device_map.values()
    assert torch.equal(_out(loaded), _out(model))


def test_meta_tensors_no_hook_holds_are_still_missing(tmp_path):
    """The check tells an offloaded tensor (held by an accelerate hook) from a missing one."""
    pytest.importorskip("accelerate")
    from accelerate.utils import set_module_tensor_to_device

    model, _ = _compressed("causal", torch.float32)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", device_map=_offload_map("disk"),
                                                  offload_folder=tmp_path / "offload")
    check = loaded.hf_quantizer._process_model_after_weight_loading
    check(loaded)  # every tensor on meta is held by its hook
    hook = loaded.model.layers[0].self_attn.q_proj._hf_hook
    held = hook.weights_map
    hook.weights_map = {"P": held["P"]}  # the hook no longer holds R
    with pytest.raises(CheckpointMismatchError, match=r"layers.0.self_attn.q_proj: tensors \['R'\] were not in the "
                                                      r"checkpoint .*no accelerate offload hook holds them; \['P'\] "
                                                      r"are offloaded"):
        check(loaded)
    hook.weights_map = held
    set_module_tensor_to_device(loaded.model.layers[1].self_attn.q_proj, "P", "meta")  # on meta, no hook at all
    with pytest.raises(CheckpointMismatchError, match=r"layers.1.self_attn.q_proj: tensors \['P'\] were not in the "
                                                      r"checkpoint \(they are on the meta device and no accelerate "
                                                      r"offload hook holds them\)"):
        check(loaded)
