import pytest

from adapters import cli


def test_parser_has_subcommands():
    p = cli._parser()
    args = p.parse_args(["compress", "smollm2", "-o", "out", "--reduction", "0.2", "--targets", "q", "k"])
    assert args.reduction == 0.2 and args.targets == ["q", "k"]
    with pytest.raises(SystemExit):
        p.parse_args(["compress", "smollm2", "-o", "out", "--reduction", "0.2", "--rank", "3"])


def test_form_and_sequential_options_reach_compress():
    p = cli._parser()
    base = ["--quiet", "compress", "smollm2", "-o", "out"]
    kw = cli._compress_kwargs(p.parse_args(base))
    assert kw["form"] == "interpolative" and "sequential" not in kw  # compress() picks the form's default
    kw = cli._compress_kwargs(p.parse_args(base + ["--form", "cur", "--no-sequential"]))
    assert kw["form"] == "cur" and kw["sequential"] is False
    kw = cli._compress_kwargs(p.parse_args(base + ["--sequential"]))
    assert kw["sequential"] is True
    kw = cli._compress_kwargs(p.parse_args(base + ["--method", "curing"]))
    assert "form" not in kw
    with pytest.raises(SystemExit):
        p.parse_args(base + ["--form", "svd"])


def test_load_model_refuses_remote_names():
    with pytest.raises(FileNotFoundError, match="no downloads"):
        cli.load_model("HuggingFaceTB/SmolLM2-135M")


def test_compress_and_eval_commands_on_tiny_model(tmp_path, calib_tokens, capsys):
    from conftest import make_tiny_llama

    src = tmp_path / "tiny"
    make_tiny_llama().save_pretrained(src)
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(33 + i): i for i in range(94)} | {"[UNK]": 94}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]").save_pretrained(src)
    out = tmp_path / "cur"
    assert cli.main(["--quiet", "compress", str(src), "-o", str(out), "--reduction", "0.1", "--nsamples", "4",
                     "--seqlen", "32"]) == 0
    assert (out / "model.safetensors").is_file()
    assert cli.main(["--quiet", "eval", str(out), "--eval-tokens", "2048", "--eval-seqlen", "64"]) == 0
    assert "perplexity" in capsys.readouterr().out
