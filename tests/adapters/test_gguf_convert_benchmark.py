"""benchmarks/gguf_convert.py's pure parts: the stock-checkpoint check, the converter's provenance,
the GGUF header record and the command line (the run itself needs llama.cpp and SmolLM2)."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gguf_convert  # noqa: E402


def _config(tmp_path, **fields):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "intermediate_size": 1017, **fields}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def test_check_stock_config_accepts_a_narrower_llama(tmp_path):
    got = gguf_convert.check_stock_config(_config(tmp_path), 1536)
    assert got == {"architectures": ["LlamaForCausalLM"], "intermediate_size": 1017, "dense_intermediate_size": 1536}


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"architectures": ["MistralForCausalLM"]}, "expected architectures"),
        ({"quantization_config": {"quant_method": "curlinalg"}}, "no quantization_config.*'curlinalg'"),
        ({"intermediate_size": 1536}, "below the dense 1536.*1536"),
        ({"intermediate_size": None}, "below the dense 1536.*None"),
    ],
)
def test_check_stock_config_refuses_what_is_not_stock_and_narrower(tmp_path, fields, match):
    with pytest.raises(ValueError, match=match):
        gguf_convert.check_stock_config(_config(tmp_path, **fields), 1536)


def test_converter_source_reads_the_sdist_layout(tmp_path):
    root = tmp_path / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
    (root / "gguf-py").mkdir(parents=True)
    (root / "gguf-py" / "pyproject.toml").write_text('[project]\nname = "gguf"\nversion = "0.19.0"\n')
    script = root / "convert_hf_to_gguf.py"
    script.write_bytes(b"print('converter')\n")
    got = gguf_convert.converter_source(script)
    assert got["sha256"] == hashlib.sha256(b"print('converter')\n").hexdigest()
    assert got["gguf_py_version"] == "0.19.0"
    assert got["sdist"].startswith("llama-cpp-python==0.3.36")
    assert "llama_cpp_commit" not in got  # no .git beside it


def test_gguf_header_reports_the_mlp_width(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_feed_forward_length(24)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tensor("blk.0.ffn_down.weight", np.zeros((8, 24), dtype=np.float32))
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    got = gguf_convert.gguf_header(path)
    assert got["architecture"] == "llama" and got["file_type"] == "ALL_F32" and got["tensors"] == 2
    assert got["hparams"]["llama.feed_forward_length"] == 24
    assert got["blk.0.ffn"] == {"blk.0.ffn_down.weight": {"shape": [24, 8], "type": "F32"}}
    assert got["has_output_weight"] is False


def test_parse_args_defaults_and_refusals(capsys):
    args = gguf_convert.parse_args(["--converter", "convert_hf_to_gguf.py"])
    assert (args.reduction, args.nsamples, args.outtype, args.eval_tokens, args.seqlen) == (
        0.2, 8, ["f32", "f16"], 4096, 2048)
    with pytest.raises(SystemExit):
        gguf_convert.parse_args([])  # --converter is required
    with pytest.raises(SystemExit):
        gguf_convert.parse_args(["--converter", "c.py", "--eval-tokens", "100"])
    assert "at least one window" in capsys.readouterr().err
