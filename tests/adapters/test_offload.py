"""Models dispatched by accelerate (CPU and disk offload) compress to the in-memory result."""

import copy
import os

import pytest
import torch

from adapters import CURConfig, InterpolativeConfig, compress, count_parameters, plan
from adapters.layer import FACTORED_LINEARS
from adapters.offload import OffloadError, compute_device, onloaded

from conftest import make_tiny_llama

accelerate = pytest.importorskip("accelerate")


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def _meta(model):
    return sorted(n for n, p in model.named_parameters() if p.device.type == "meta")


def _layer_map(where, layers):
    """Explicit device map: layer 1 (and the head) offloaded to ``where``, the other layers resident."""
    return {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": where} | {
        f"model.layers.{i}": where if i == 1 else "cpu" for i in range(layers)}


def _dispatch(model, kind, tmp_path):
    """An offloaded copy of ``model``; on a CPU-only machine the execution device is the CPU."""
    from accelerate import cpu_offload, dispatch_model, infer_auto_device_map

    model = copy.deepcopy(model)
    if kind == "cpu":  # every weight in a host state dict, on meta in the model
        return cpu_offload(model, execution_device="cpu")
    if kind == "auto":  # max_memory forces the decoder layers off the (CPU) main device
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        device_map = infer_auto_device_map(model, max_memory={"cpu": size * 3 // 4},
                                           no_split_module_classes=["LlamaDecoderLayer"])
        assert "disk" in device_map.values()
    else:
        device_map = _layer_map("disk", model.config.num_hidden_layers)
    return dispatch_model(model, device_map, offload_dir=str(tmp_path / "offload"))


@pytest.mark.parametrize("kind, config", [
    ("cpu", InterpolativeConfig(reduction=0.2)), ("auto", InterpolativeConfig(reduction=0.2)),
    ("disk", InterpolativeConfig(reduction=0.2)), ("disk", CURConfig(reduction=0.2)),  # CURConfig: sequential
    ("disk", InterpolativeConfig(reduction=0.2, sequential=True, mix=0.75, refit_ridge=1e-2, passes=2)),
    ("cpu", InterpolativeConfig(reduction=0.2, sequential=True, mix=0.75, passes=2)),
], ids=["cpu", "auto", "disk", "disk-cur-sequential", "disk-refit-2-passes", "cpu-refit-2-passes"])
def test_offloaded_model_compresses_like_the_in_memory_one(kind, config, calib_tokens, eval_tokens, tmp_path):
    dense = make_tiny_llama(layers=3)
    off = _dispatch(dense, kind, tmp_path)
    offloaded = _meta(off)
    assert any(".layers." in n and n.endswith("proj.weight") for n in offloaded)  # the weights really are on meta
    torch.testing.assert_close(_logits(off, eval_tokens), _logits(dense, eval_tokens))

    _, want = compress(dense, config, calibration=calib_tokens, progress=False)
    _, got = compress(off, config, calibration=calib_tokens, progress=False)

    assert [(m.name, m.rank, m.rows, m.cols) for m in got.modules] == [(m.name, m.rank, m.rows, m.cols) for m in want.modules]
    assert got.params_after == want.params_after == count_parameters(off)
    torch.testing.assert_close(_logits(off, eval_tokens), _logits(dense, eval_tokens), rtol=1e-5, atol=1e-6)
    for m in got.modules:  # placed where the dense module lived: offloaded modules stay offloaded
        new = off.get_submodule(m.name)
        assert isinstance(new, FACTORED_LINEARS)
        was_offloaded = f"{m.name}.weight" in offloaded
        assert all((p.device.type == "meta") == was_offloaded for p in new.parameters())
    if kind != "cpu":
        written = os.listdir(tmp_path / "offload" / "compressed")
        assert sorted(written) == sorted(f"{m.name}.safetensors" for m in got.modules if f"{m.name}.weight" in offloaded)


def test_onloaded_reads_one_module_and_puts_it_back(tmp_path):
    dense = make_tiny_llama()
    off = _dispatch(dense, "disk", tmp_path)
    name = "model.layers.1.mlp.down_proj"
    assert off.get_submodule(name).weight.device.type == "meta"
    with onloaded(off, name) as lin:
        torch.testing.assert_close(lin.weight, dense.get_submodule(name).weight, rtol=0, atol=0)
        assert not any(n.startswith(name + ".") for n in _meta(off))
        assert "model.layers.1.mlp.up_proj.weight" in _meta(off)  # only that module
    assert off.get_submodule(name).weight.device.type == "meta"
    assert compute_device(off.model.layers[1]) == torch.device("cpu")


def test_plan_reads_offloaded_weights(calib_tokens, tmp_path):
    dense = make_tiny_llama()
    off = _dispatch(dense, "disk", tmp_path)
    cfg = InterpolativeConfig(reduction=0.2)
    want = plan(dense, cfg, calibration=calib_tokens, progress=False)
    got = plan(off, cfg, calibration=calib_tokens, progress=False)
    assert [m.rank for m in got.modules] == [m.rank for m in want.modules]
    assert not any(isinstance(m, FACTORED_LINEARS) for m in off.modules())


def test_meta_weights_without_offload_map_raise_before_work(calib_tokens, monkeypatch):
    from accelerate import init_empty_weights

    with init_empty_weights():
        empty = make_tiny_llama()
    monkeypatch.setattr("adapters.planning.prepare_calibration",
                        lambda *a, **k: pytest.fail("calibration ran before the check"))
    with pytest.raises(OffloadError, match="meta device with nothing to read it from.*dispatch_model"):
        compress(empty, calibration=calib_tokens, reduction=0.2, progress=False)
    with pytest.raises(OffloadError, match="model.embed_tokens.weight"):
        plan(empty, InterpolativeConfig(reduction=0.2), calibration=calib_tokens, progress=False)


def test_disk_map_into_the_checkpoint_needs_offload_folder(calib_tokens, eval_tokens, tmp_path, monkeypatch):
    """As from_pretrained's disk offload: weights read from the checkpoint's files, no folder of their own."""
    from accelerate import dispatch_model
    from safetensors.torch import save_file

    dense = make_tiny_llama()
    off = copy.deepcopy(dense)
    device_map = _layer_map("disk", 2)
    disk = {k: v.contiguous() for k, v in dense.state_dict().items() if k.startswith(("model.layers.1.", "lm_head"))}
    ckpt = str(tmp_path / "model.safetensors")
    save_file(disk, ckpt)
    index = {k: {"safetensors_file": ckpt, "weight_name": k, "dtype": "float32"} for k in disk}
    dispatch_model(off, device_map, offload_index=index)
    ref = _logits(off, eval_tokens)
    monkeypatch.setattr("adapters.planning.prepare_calibration",
                        lambda *a, **k: pytest.fail("calibration ran before the check"))
    with pytest.raises(OffloadError, match="offload_folder="):
        compress(off, calibration=calib_tokens, reduction=0.2, progress=False)
    monkeypatch.undo()
    _, want = compress(dense, calibration=calib_tokens, reduction=0.2, progress=False)
    _, got = compress(off, calibration=calib_tokens, reduction=0.2, progress=False, offload_folder=tmp_path / "factors")
    assert [m.rank for m in got.modules] == [m.rank for m in want.modules]
    assert (tmp_path / "factors" / "compressed" / "model.layers.1.mlp.down_proj.safetensors").is_file()
    torch.testing.assert_close(_logits(off, eval_tokens), _logits(dense, eval_tokens), rtol=1e-5, atol=1e-6)
    assert not torch.equal(ref, _logits(off, eval_tokens))


def test_failure_midway_restores_and_deletes_written_factors(calib_tokens, eval_tokens, tmp_path, monkeypatch):
    off = _dispatch(make_tiny_llama(), "disk", tmp_path)
    ref = _logits(off, eval_tokens)
    modules_before = dict(off.named_modules())
    from adapters.offload import Placer

    real, calls = Placer._write, {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # after two factors were written to disk
            raise RuntimeError("injected failure")
        return real(self, *a, **k)

    monkeypatch.setattr(Placer, "_write", flaky)
    with pytest.raises(RuntimeError, match="injected failure"):
        compress(off, calibration=calib_tokens, reduction=0.2, progress=False)
    assert all(m is modules_before[n] for n, m in off.named_modules())
    assert os.listdir(tmp_path / "offload" / "compressed") == []
    torch.testing.assert_close(_logits(off, eval_tokens), ref, rtol=0, atol=0)


@pytest.mark.parametrize("sequential, expected", [(False, {"weight": 2}), (True, {"weight": 2, "P": 1, "R": 1})],
                         ids=["one-pass", "refit"])
def test_each_offloaded_weight_is_read_once_per_pass_and_one_layer_is_resident(calib_tokens, monkeypatch, sequential,
                                                                               expected):
    """Four calibration batches, two passes (ranks, then fits): two reads of the dense weight, not
    eight (the default refit reads its fitted factors once more, to run the compressed path); one
    layer on the device."""
    import accelerate.hooks
    import accelerate.utils

    off = _dispatch(make_tiny_llama(layers=3), "cpu", None)
    layers = off.model.layers
    one_layer = max(sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in layers)
    reads, peak, real = {}, [0], accelerate.utils.set_module_tensor_to_device

    def counted(module, name, device, *a, value=None, **k):
        out = real(module, name, device, *a, value=value, **k)
        if value is not None and module is off.model.layers[1].mlp.down_proj:
            reads[name] = reads.get(name, 0) + 1
        peak[0] = max(peak[0], sum(t.numel() * t.element_size() for t in layers.parameters() if t.device.type != "meta"))
        return out

    monkeypatch.setattr(accelerate.hooks, "set_module_tensor_to_device", counted)
    monkeypatch.setattr(accelerate.utils, "set_module_tensor_to_device", counted)
    compress(off, InterpolativeConfig(reduction=0.2, batch_size=4, sequential=sequential), calibration=calib_tokens,
             progress=False)
    assert reads == expected
    assert 0 < peak[0] <= one_layer


@pytest.mark.parametrize("kind", ["cpu", "disk"])
def test_offloaded_compressed_model_saves_and_loads(kind, calib_tokens, eval_tokens, tmp_path):
    from adapters import load_compressed, save_compressed

    dense = make_tiny_llama(tie=True)
    off = _dispatch(dense, kind, tmp_path)
    compress(dense, calibration=calib_tokens, reduction=0.2, progress=False)
    compress(off, calibration=calib_tokens, reduction=0.2, progress=False)
    save_compressed(off, tmp_path / "saved")
    loaded = load_compressed(tmp_path / "saved")
    torch.testing.assert_close(_logits(loaded, eval_tokens), _logits(dense, eval_tokens), rtol=1e-5, atol=1e-6)


def test_heal_of_an_offloaded_model_is_refused_before_work(calib_tokens, tmp_path, monkeypatch):
    off = _dispatch(make_tiny_llama(), "disk", tmp_path)
    monkeypatch.setattr("adapters.planning.prepare_calibration",
                        lambda *a, **k: pytest.fail("calibration ran before the check"))
    with pytest.raises(NotImplementedError, match="offloaded by accelerate.*save_compressed"):
        compress(off, calibration=calib_tokens, reduction=0.2, progress=False, heal=True)
    assert not any(isinstance(m, FACTORED_LINEARS) for m in off.modules())
