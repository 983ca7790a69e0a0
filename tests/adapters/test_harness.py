"""adapters.harness: lm-evaluation-harness's command line on a compressed checkpoint (issue 24, item 3).

``lm_eval --model hf --model_args pretrained=DIR`` stopped with ``ValueError: Unknown
quantization type, got curlinalg``: it loads the folder in a process that never imports
adapters. ``python -m adapters.harness`` is lm_eval's command line with adapters imported.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from adapters import compress  # noqa: E402

from conftest import make_tiny_llama  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TASKS = Path(__file__).resolve().parent / "data" / "harness"
TASK = "curlinalg_tiny_text"


def _tokenizer():
    """Characters ``!`` to ``~``, an unknown token and an end-of-text token (lm-eval's rolling
    windows start from it); 96 ids, inside the tiny model's 128."""
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(33 + i): i for i in range(94)} | {"[UNK]": 94, "</s>": 95}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="</s>")


def _bits_per_byte(model, tok, texts):
    """What the task measures, computed here: each line is one window (shorter than the model's
    128 positions) predicted after the end-of-text token; bits per UTF-8 byte over all lines."""
    ll, nbytes = 0.0, 0
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([[tok.eos_token_id, *ids[:-1]]])).logits[0].double()
        ll += float(torch.log_softmax(logits, -1)[torch.arange(len(ids)), torch.tensor(ids)].sum())
        nbytes += len(text.encode("utf-8"))
    return -ll / nbytes / math.log(2)


def test_lm_eval_command_line_through_adapters_harness_scores_a_compressed_checkpoint(tmp_path):
    """The command line in a subprocess, offline, on the local task the docs show; its score is
    the one computed here from the same checkpoint (float32 forward passes batched differently:
    agreement to 1e-5 relative; a model with other weights, e.g. randomly initialised layers, is
    off in the second or third digit)."""
    from transformers import AutoModelForCausalLM

    calib = torch.randint(3, 96, (16, 32), generator=torch.Generator().manual_seed(1))
    model, _ = compress(make_tiny_llama(), calibration=calib, reduction=0.2, progress=False)
    tok = _tokenizer()
    ckpt = tmp_path / "compressed"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "adapters.harness", "--model", "hf", "--model_args", f"pretrained={ckpt}",
           "--tasks", TASK, "--include_path", str(TASKS), "--device", "cpu", "--batch_size", "1",
           "--output_path", str(tmp_path / "results")]
    done = subprocess.run(cmd, cwd=TASKS, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = (tmp_path / "results").rglob("results_*.json")
    got = json.loads(path.read_text())["results"][TASK]["bits_per_byte,none"]
    texts = [json.loads(line)["text"] for line in (TASKS / "tiny_text.jsonl").read_text().splitlines()]
    reloaded = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    assert got == pytest.approx(_bits_per_byte(reloaded, tok, texts), rel=1e-5)


def test_harness_names_the_package_when_lm_eval_is_missing(monkeypatch):
    from adapters import harness

    monkeypatch.setitem(sys.modules, "lm_eval.__main__", None)
    with pytest.raises(ModuleNotFoundError, match="pip install 'lm-eval"):
        harness.main(["--help"])
