import dataclasses

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
