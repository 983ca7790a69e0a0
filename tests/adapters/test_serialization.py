import json

import pytest
import torch

from adapters import CheckpointMismatchError, CURLinear, compress, load_compressed, save_compressed
from adapters.layer import FACTORED_LINEARS, InterpolativeLinear

from conftest import make_tiny_llama


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


@pytest.fixture(
    params=[(False, "cur"), (True, "cur"), (False, "interpolative"), (True, "interpolative")],
    ids=["untied-cur", "tied-cur", "untied-interpolative", "tied-interpolative"],
)
def compressed(request, calib_tokens):
    tie, form = request.param
    model = make_tiny_llama(tie=tie)
    model, report = compress(model, calibration=calib_tokens, reduction=0.15, form=form, progress=False)
    return model, report


def test_round_trip_identical_logits(compressed, eval_tokens, tmp_path):
    model, report = compressed
    path = save_compressed(model, tmp_path / "ckpt")
    cfg = json.loads((path / "config.json").read_text())
    assert set(cfg["cur_compression"]["modules"]) == {m.name for m in report.modules}
    assert not list(path.glob("*.bin")) and not list(path.glob("*.pt"))
    loaded = load_compressed(path)
    kind = InterpolativeLinear if report.options["form"] == "interpolative" else CURLinear
    assert sum(isinstance(m, kind) for m in loaded.modules()) == len(report.modules)
    assert sum(isinstance(m, FACTORED_LINEARS) for m in loaded.modules()) == len(report.modules)
    assert all(
        torch.equal(a.rows, b.rows) for a, b in zip(
            (m for m in loaded.modules() if isinstance(m, kind)), (m for m in model.modules() if isinstance(m, kind))
        )
    )
    assert sum(p.numel() for p in loaded.parameters()) == report.params_after
    assert torch.equal(_logits(loaded, eval_tokens), _logits(model, eval_tokens))


def test_save_is_atomic_and_refuses_overwrite(compressed, tmp_path, monkeypatch):
    model, _ = compressed
    path = save_compressed(model, tmp_path / "ckpt")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_compressed(model, path)
    import safetensors.torch

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_compressed(model, tmp_path / "other")
    assert not (tmp_path / "other").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_save_dense_model_refused(tmp_path):
    with pytest.raises(ValueError, match="no CURLinear"):
        save_compressed(make_tiny_llama(), tmp_path / "x")


def test_load_refuses_mismatched_rank(compressed, tmp_path):
    model, report = compressed
    path = save_compressed(model, tmp_path / "ckpt")
    cfg = json.loads((path / "config.json").read_text())
    name = report.modules[0].name
    cfg["cur_compression"]["modules"][name]["rank"] += 1
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="shape mismatch"):
        load_compressed(path)


def test_load_refuses_wrong_config(compressed, tmp_path):
    model, _ = compressed
    path = save_compressed(model, tmp_path / "ckpt")
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] += 8
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError):
        load_compressed(path)


def test_load_refuses_unknown_module_and_plain_checkpoint(compressed, tmp_path):
    model, _ = compressed
    path = save_compressed(model, tmp_path / "ckpt")
    cfg = json.loads((path / "config.json").read_text())
    cfg["cur_compression"]["modules"]["model.layers.0.mlp.nope"] = {"out_features": 1, "in_features": 1, "rank": 1, "bias": False}
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="no linear layer"):
        load_compressed(path)
    del cfg["cur_compression"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="not a CUR-compressed"):
        load_compressed(path)
    with pytest.raises(FileNotFoundError):
        load_compressed(tmp_path / "missing")


def test_load_refuses_damaged_interpolative_indices(calib_tokens, tmp_path):
    from safetensors.torch import load_file, save_file

    model, report = compress(make_tiny_llama(), calibration=calib_tokens, reduction=0.15, form="interpolative", progress=False)
    path = save_compressed(model, tmp_path / "ckpt")
    weights = load_file(str(path / "model.safetensors"))
    key = f"{report.modules[0].name}.rows"
    weights[key] = weights[key].clone()
    weights[key][0] = weights[key][1]  # a duplicated row index: rows and rest no longer split the outputs
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError, match="not a split of range"):
        load_compressed(path)


def test_load_refuses_unknown_form(compressed, tmp_path):
    model, report = compressed
    path = save_compressed(model, tmp_path / "ckpt")
    cfg = json.loads((path / "config.json").read_text())
    cfg["cur_compression"]["modules"][report.modules[0].name]["form"] = "tucker"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="form 'tucker'"):
        load_compressed(path)


def test_config_travels_with_the_checkpoint(compressed, tmp_path):
    model, _ = compressed
    path = save_compressed(model, tmp_path / "ckpt")
    assert load_compressed(path).compression_config == model.compression_config


def test_checkpoints_written_before_configs_still_load(compressed, eval_tokens, tmp_path):
    """Earlier checkpoints have no config (and no form for C U R layers) in their section."""
    model, report = compressed
    path = save_compressed(model, tmp_path / "ckpt")
    cfg = json.loads((path / "config.json").read_text())
    del cfg["cur_compression"]["config"]
    for spec in cfg["cur_compression"]["modules"].values():
        if spec["form"] == "cur":
            del spec["form"]
    (path / "config.json").write_text(json.dumps(cfg))
    loaded = load_compressed(path)
    assert getattr(loaded, "compression_config", None) is None
    assert torch.equal(_logits(loaded, eval_tokens), _logits(model, eval_tokens))


def test_saved_folder_follows_the_umask(calib_tokens, tmp_path):
    """``tempfile.mkdtemp`` made the checkpoint folder 0700 whatever the umask."""
    import os
    import stat

    model, _ = compress(make_tiny_llama(), calibration=calib_tokens[:2], rank=2, progress=False)
    for umask in (0o022, 0o077):
        old = os.umask(umask)
        try:
            path = save_compressed(model, tmp_path / f"ckpt{umask:o}")
        finally:
            os.umask(old)
        assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask
