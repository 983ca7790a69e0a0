import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from adapters import (
    CheckpointMismatchError,
    CURConfig,
    CURingConfig,
    CURLinear,
    InterpolativeConfig,
    SVDConfig,
    compress,
    load_compressed,
    save_compressed,
)
from adapters.layer import FACTORED_LINEARS, LAYERS, InterpolativeLinear, LowRankLinear

from conftest import char_tokenizer, make_tiny_classifier, make_tiny_llama, one_thread_logits

LEGACY = Path(__file__).parent / "data"


def _fixture_tolerance(model, logits):
    """How far a float32 forward pass written on another CPU may lie from the exact one.

    The fixtures' logits were computed in float32 on the machine that wrote them; another CPU
    (another BLAS kernel, vector width, FMA or ``exp``) sums in another order. Every reduction
    of ``n`` terms in the pass (a matrix product, an RMSNorm or softmax sum) lies within
    ``gamma_n = n u / (1 - n u)`` of its exact value, relative to the sum of its terms'
    magnitudes, whatever the order (Higham, *Accuracy and Stability of Numerical Algorithms*,
    2nd ed., Sec. 3.1), with ``u = 2**-24``. A decoder layer chains at most 20 of them (two
    norms, up to three factors in each of the projections on a path, ``q k^T``, the softmax,
    ``p v``) and the head two more. The budget gives each of them one ``gamma_n`` of the
    largest logit, ``n`` the longest reduction (hidden, intermediate or sequence length): the
    first-order error of a pass through layers of gain about one, as these tiny random ones
    are. Measured, both evaluations lie within 2 ulp of the largest logit of the exact one;
    the budget is about 200 times that, and a wrong factor (rows swapped, a factor zeroed or
    transposed, in any one layer) moves the logits by 18 times the budget or more.
    """
    cfg = model.config
    n = max(cfg.hidden_size, cfg.intermediate_size, logits.shape[-2])
    u = torch.finfo(torch.float32).eps / 2
    gamma = n * u / (1 - n * u)
    return (20 * cfg.num_hidden_layers + 2) * gamma * float(logits.abs().max())


def _assert_matches_fixture(model, tokens, expected):
    """``model``'s float32 logits and the fixture's both within :func:`_fixture_tolerance` of the
    float64 evaluation of the same weights: a reference that does not depend on the CPU."""
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(tokens).logits
    tol = _fixture_tolerance(model, expected)
    assert float((expected.double() - exact).abs().max()) <= tol
    assert float((_logits(model, tokens).double() - exact).abs().max()) <= tol


def _logits(model, tokens):
    """Logits on one torch thread (two are covered by
    ``test_reloaded_model_gives_the_same_logits_in_every_dtype``)."""
    return one_thread_logits(model, tokens)


@pytest.fixture(
    scope="module",
    params=[(False, "cur"), (True, "cur"), (False, "interpolative"), (True, "interpolative")],
    ids=["untied-cur", "tied-cur", "untied-interpolative", "tied-interpolative"],
)
def compressed(request):
    """Compressed once per module (the tests only save and read it)."""
    tie, form = request.param
    calib_tokens = torch.randint(0, 128, (16, 32), generator=torch.Generator().manual_seed(1))
    model = make_tiny_llama(tie=tie)
    model, report = compress(model, calibration=calib_tokens, reduction=0.15, form=form, progress=False)
    return model, report


def test_round_trip_identical_logits(compressed, eval_tokens, tmp_path):
    model, report = compressed
    path = save_compressed(model, tmp_path / "ckpt")
    cfg = json.loads((path / "config.json").read_text())
    assert set(cfg["quantization_config"]["modules"]) == {m.name for m in report.modules}
    assert "cur_compression" not in cfg
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
    assert loaded.compression_config == model.compression_config
    assert torch.equal(_logits(loaded, eval_tokens), _logits(model, eval_tokens))


def test_save_is_atomic_and_refuses_overwrite(compressed, tmp_path, monkeypatch):
    model, _ = compressed
    path = save_compressed(model, tmp_path / "ckpt")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_compressed(model, path)

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        save_compressed(model, tmp_path / "other")
    with pytest.raises(OSError, match="disk full"):
        save_compressed(model, path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert (path / "model.safetensors").is_file()


def test_save_into_existing_empty_folder_and_overwrite(compressed, eval_tokens, tmp_path):
    model, _ = compressed
    empty = tmp_path / "empty"
    empty.mkdir()
    save_compressed(model, empty)
    assert torch.equal(_logits(load_compressed(empty), eval_tokens), _logits(model, eval_tokens))
    (empty / "stale.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        save_compressed(model, empty)
    save_compressed(model, empty, overwrite=True)
    assert not (empty / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_save_dense_model_refused(tmp_path):
    with pytest.raises(ValueError, match="no CURLinear"):
        save_compressed(make_tiny_llama(), tmp_path / "x")


def test_tokenizer_chat_template_and_generation_config_are_kept(calib_tokens, tmp_path):
    model, _ = compress(make_tiny_llama(), calibration=calib_tokens, reduction=0.15, progress=False)
    model.generation_config.eos_token_id = [5, 7]
    model.generation_config.do_sample, model.generation_config.temperature = True, 0.6
    tok = char_tokenizer()
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    path = save_compressed(model, tmp_path / "ckpt", tokenizer=tok)
    from transformers import AutoTokenizer

    back = AutoTokenizer.from_pretrained(path)
    assert back.chat_template == tok.chat_template
    assert back.apply_chat_template([{"role": "u", "content": "hi"}], tokenize=False) == "<u>hi"
    gen = load_compressed(path).generation_config
    assert (gen.eos_token_id, gen.do_sample, gen.temperature) == ([5, 7], True, 0.6)


def test_load_keeps_the_task_head(tmp_path):
    tokens = torch.randint(1, 128, (2, 16), generator=torch.Generator().manual_seed(3))
    model, _ = compress(make_tiny_classifier(), calibration=tokens.repeat(4, 2), reduction=0.15, progress=False)
    path = save_compressed(model, tmp_path / "cls")
    loaded = load_compressed(path)
    assert type(loaded).__name__ == "LlamaForSequenceClassification"
    assert torch.equal(_logits(loaded, tokens), _logits(model, tokens))


def test_load_dtype_option(compressed, tmp_path):
    model, _ = compressed
    path = save_compressed(model, tmp_path / "ckpt")
    assert {p.dtype for p in load_compressed(path, dtype=torch.bfloat16).parameters()} == {torch.bfloat16}


def test_load_refuses_unresolvable_class_and_plain_checkpoint(compressed, tmp_path):
    model, _ = compressed
    path = save_compressed(model, tmp_path / "ckpt")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(cfg | {"architectures": ["NoSuchModelForCausalLM"]}))
    with pytest.raises(CheckpointMismatchError, match="'NoSuchModelForCausalLM', which transformers .* does not provide"):
        load_compressed(path)
    del cfg["quantization_config"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="not a CUR-compressed"):
        load_compressed(path)
    with pytest.raises(FileNotFoundError):
        load_compressed(tmp_path / "missing")


# Folders written by save_compressed before issue 12 (format 1), made with the code at 931e63b,
# on another machine: their logits are compared within a rounding tolerance, never bit for bit.

@pytest.mark.parametrize("form", ["cur", "interpolative"])
def test_legacy_folders_still_load(form, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    src = LEGACY / f"legacy_v1_{form}"
    expected = load_file(str(src / "expected.safetensors"))
    loaded = load_compressed(src)
    kind = {"cur": CURLinear, "interpolative": InterpolativeLinear}[form]
    assert any(isinstance(m, kind) for m in loaded.modules())
    assert loaded.compression_config.method == form
    _assert_matches_fixture(loaded, expected["tokens"], expected["logits"])
    loaded.save_pretrained(tmp_path / "new")  # the upgrade path
    cfg = json.loads((tmp_path / "new" / "config.json").read_text())
    assert "cur_compression" not in cfg and cfg["quantization_config"]["format_version"] == 2
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "new")
    # the same weights, the same arithmetic, in this process: bit for bit
    assert torch.equal(_logits(again, expected["tokens"]), _logits(loaded, expected["tokens"]))


def test_legacy_folders_without_config_or_form_still_load(tmp_path):
    """The first format-1 folders had no config (and no form for C U R layers) in their section."""
    from safetensors.torch import load_file

    path = shutil.copytree(LEGACY / "legacy_v1_cur", tmp_path / "old")
    cfg = json.loads((path / "config.json").read_text())
    del cfg["cur_compression"]["config"]
    for spec in cfg["cur_compression"]["modules"].values():
        del spec["form"]
    (path / "config.json").write_text(json.dumps(cfg))
    expected = load_file(str(path / "expected.safetensors"))
    loaded = load_compressed(path)
    assert getattr(loaded, "compression_config", None) is None
    _assert_matches_fixture(loaded, expected["tokens"], expected["logits"])


def test_legacy_folder_that_disagrees_with_its_tensors_is_refused(tmp_path):
    path = shutil.copytree(LEGACY / "legacy_v1_interpolative", tmp_path / "old")
    cfg = json.loads((path / "config.json").read_text())
    name = next(iter(cfg["cur_compression"]["modules"]))
    cfg["cur_compression"]["modules"][name]["rank"] += 1
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match=rf"{name}: the record says .* disagree"):
        load_compressed(path)
    cfg["cur_compression"]["format_version"] = 7
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="format_version 7, expected 1"):
        load_compressed(path)


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


# The model compress returns is the model the checkpoint reloads, in every dtype, every form and
# on one thread or several. A bf16 (fp16) model made with ``model.to(dtype)`` used to reload to
# logits 1% (0.1%) of the largest one away, a dense model as much: ``.to`` casts the rotary
# embedding's non-persistent ``inv_freq`` buffer, which save_pretrained does not write and
# from_pretrained rebuilds in float32 (transformers' behaviour, not our layers': their tensors
# were saved and loaded bit for bit). compress now rebuilds such buffers as loading builds them
# (adapters.hf_quantizer.rebuild_buffers). After that the two models hold the same values in the
# same dtypes and layouts and run the same kernels, so their logits are compared bit for bit.

ROUND_TRIP_CONFIGS = {
    "interpolative": InterpolativeConfig(reduction=0.25),
    "cur": CURConfig(reduction=0.25),
    "svd": SVDConfig(reduction=0.25),
    "curing": CURingConfig(rank=8, n_layers=2),
}


@pytest.fixture(
    scope="module",
    params=[(form, dtype, cast) for form in ROUND_TRIP_CONFIGS for dtype in ("float32", "bfloat16", "float16")
            for cast in (("built",) if dtype == "float32" else ("to", "built"))],
    ids=lambda p: "-".join(p),
)
def compressed_in_dtype(request, tmp_path_factory):
    """A tiny Llama (hidden 96, 3 layers) in ``dtype``, cast with ``model.to`` or built in it,
    compressed in ``form``, saved and reloaded with ``AutoModelForCausalLM.from_pretrained``."""
    from transformers import AutoModelForCausalLM

    form, dtype, cast = request.param
    dtype = getattr(torch, dtype)
    if cast == "to":
        model = make_tiny_llama(layers=3, hidden=96, intermediate=192).to(dtype)
    else:
        model = make_tiny_llama(layers=3, hidden=96, intermediate=192, dtype=dtype)
    calib = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(1))
    model, report = compress(model, ROUND_TRIP_CONFIGS[form], calibration=calib, progress=False)
    path = tmp_path_factory.mktemp("ckpt") / form
    model.save_pretrained(path)
    return form, dtype, model, AutoModelForCausalLM.from_pretrained(path), report


@pytest.mark.parametrize("threads", [1, 2])
def test_reloaded_model_gives_the_same_logits_in_every_dtype(compressed_in_dtype, threads):
    form, dtype, model, loaded, report = compressed_in_dtype
    kind = LAYERS[report.options["form"]]
    assert sum(isinstance(m, kind) for m in loaded.modules()) == len(report.modules) > 0
    assert {p.dtype for p in loaded.parameters()} == {p.dtype for p in model.parameters()} == {dtype}
    assert {n: b.dtype for n, b in loaded.named_buffers()} == {n: b.dtype for n, b in model.named_buffers()}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shape in ((1, 5), (2, 32)):  # decoding, and the prefill layout of InterpolativeLinear
            tokens = torch.randint(0, 128, shape, generator=torch.Generator().manual_seed(2))
            with torch.no_grad():
                assert torch.equal(loaded(tokens).logits, model(tokens).logits)
    finally:
        torch.set_num_threads(previous)


def test_low_rank_form_is_saved_and_loaded(calib_tokens, tmp_path):
    """SVDConfig's LowRankLinear layers used to be written without a record: reloading gave a
    dense model with random weights where the factors had been."""
    model, report = compress(make_tiny_llama(), SVDConfig(reduction=0.2), calibration=calib_tokens, progress=False)
    path = save_compressed(model, tmp_path / "svd")
    cfg = json.loads((path / "config.json").read_text())
    assert {spec["form"] for spec in cfg["quantization_config"]["modules"].values()} == {"svd"}
    loaded = load_compressed(path)
    assert sum(isinstance(m, LowRankLinear) for m in loaded.modules()) == len(report.modules)
    assert sum(p.numel() for p in loaded.parameters()) == report.params_after
    loaded.dequantize()
    assert not any(isinstance(m, LowRankLinear) for m in loaded.modules())
