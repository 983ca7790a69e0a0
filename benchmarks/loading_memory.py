"""Peak memory of loading a compressed checkpoint (issue 12), each load in a fresh process.

A random Llama of about 50M parameters (vocab 16384, hidden 512, 8 layers, MLP 2048, untied
embeddings, float32) is built in memory, saved dense with ``save_pretrained``, compressed with
the default method (``InterpolativeConfig``, random calibration tokens: the weights are random,
so the quality is meaningless; only the sizes matter) and saved with ``save_pretrained``.  Then
each of these runs in its own subprocess, ``--repeats`` times:

* ``dense``: ``AutoModelForCausalLM.from_pretrained(dense folder)``;
* ``compressed``: the same call on the compressed folder (after ``import adapters``: the
  quantizer builds the compressed layers on the meta device);
* ``compressed-before`` (unless ``--no-before``): ``adapters.load_compressed`` of a format-1
  folder with the code at ``--before-commit`` (931e63b, before issue 12), which built the
  dense model first and then swapped in the compressed layers.

Every child imports torch, transformers and adapters first, records its resident set (RSS)
then, resets the peak (``/proc/self/clear_refs``), loads, records the peak RSS (``VmHWM``),
runs one forward pass on 32 tokens and records the peak again, with the anonymous and
file-backed parts of the RSS; the parent checks the logits against the in-memory compressed
model.  Figures in MiB.

Why both peaks: transformers maps the safetensors file and, where no dtype conversion is
needed, the parameters are views of the mapping, whose pages become resident when first read.
Right after ``from_pretrained`` only part of the weights is resident; after a forward pass all
of them are.  ``peak_after_forward_above_imports`` is the footprint of a loaded, used model.

Usage::

    python benchmarks/loading_memory.py                  # writes results/loading_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import _common  # noqa: E402

MIB = 2**20
SHAPE = dict(vocab_size=16384, hidden_size=512, intermediate_size=2048, num_hidden_layers=8,
             num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256, tie_word_embeddings=False)

CHILD = r"""
import os, resource, sys, json
sys.path.insert(0, sys.argv[1])
import torch, transformers, adapters
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
after_imports = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM: the peak below is the load's
mode, path, out = sys.argv[2], sys.argv[3], sys.argv[4]
if mode == "before":
    model = adapters.load_compressed(path)
else:
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
peak = status("VmHWM:")
tokens = torch.arange(1, 33).reshape(1, 32)
with torch.no_grad():
    torch.save(model(tokens).logits, out)
print(json.dumps({"rss_after_imports": after_imports, "peak_rss": peak, "peak_rss_after_forward": status("VmHWM:"),
                  "rss_anon_after_forward": status("RssAnon:"), "rss_file_after_forward": status("RssFile:"),
                  "params": sum(p.numel() for p in model.parameters())}))
"""


def _child(mode: str, path: Path, code_root: Path, tmp: Path) -> dict:
    out = tmp / f"logits-{mode}.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(code_root))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(code_root), mode, str(path), str(out)],
                          capture_output=True, text=True, env=env, cwd=str(tmp), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {mode} failed:\n{proc.stderr[-3000:]}")
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    rec["logits_file"] = str(out)
    return rec


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


_SAVE_V1 = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
import adapters, transformers
from adapters.layer import LAYERS
from safetensors.torch import load_file
src = sys.argv[2]
cfg = transformers.AutoConfig.from_pretrained(src)
rec = json.load(open(src + "/config.json"))["quantization_config"]
delattr(cfg, "quantization_config")
m = transformers.AutoModelForCausalLM.from_config(cfg)
for name, s in rec["modules"].items():
    parent, _, attr = name.rpartition(".")
    layer = LAYERS[s["form"]].empty(s["out_features"], s["in_features"], s["rank"], bias=s["bias"], dtype=torch.float32)
    setattr(m.get_submodule(parent), attr, layer)
m.load_state_dict(load_file(src + "/model.safetensors"), strict=False)
m.tie_weights()
m.compression_config = adapters.config_from_dict(rec["compression"])
adapters.save_compressed(m, sys.argv[3])
"""


def _build(work: Path, root: Path, args) -> None:
    """Write the dense and compressed folders, the reference logits and, with the code at
    ``--before-commit``, the same compressed model as a format-1 folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import adapters

    torch.manual_seed(0)
    dense = LlamaForCausalLM(LlamaConfig(**SHAPE)).eval()
    dense_params = adapters.count_parameters(dense)
    dense.save_pretrained(work / "dense")
    calib = torch.randint(0, SHAPE["vocab_size"], (8, 128), generator=torch.Generator().manual_seed(1))
    config = adapters.InterpolativeConfig(reduction=args.reduction, nsamples=8, seqlen=128)
    model, report = adapters.compress(dense, config, calibration=calib, progress=False)
    model.save_pretrained(work / "compressed")
    with torch.no_grad():
        torch.save(model(torch.arange(1, 33).reshape(1, 32)).logits, work / "reference-logits.pt")
    if not args.no_before:
        old = work / "before"
        old.mkdir(exist_ok=True)
        archive = subprocess.run(["git", "-C", str(root), "archive", args.before_commit, "adapters", "curlinalg"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(old))
        subprocess.run([sys.executable, "-c", _SAVE_V1, str(old), str(work / "compressed"), str(work / "compressed-v1")],
                       check=True, env=env, cwd=str(work))
    (work / "built.json").write_text(json.dumps({
        "dense_params": dense_params, "compressed_params": report.params_after,
        "compressed_modules": len(report.modules), "reduction": args.reduction, "config": config.to_dict(),
    }))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--reduction", type=float, default=0.5)
    p.add_argument("--before-commit", default="931e63b")
    p.add_argument("--no-before", action="store_true", help="skip the load_compressed run of the code before issue 12")
    p.add_argument("--output", default="loading_memory.json")
    p.add_argument("--work", help="folder for the checkpoints; reused when it already holds them (default: a new temporary one)")
    args = p.parse_args(argv)

    import torch

    root = HERE.parent
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="loading-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "built.json").is_file():
        _build(work, root, args)
    built = json.loads((work / "built.json").read_text())
    reference = torch.load(work / "reference-logits.pt")
    folders = {"dense": work / "dense", "compressed": work / "compressed"}
    code = {"dense": root, "compressed": root}
    if not args.no_before:
        folders["before"], code["before"] = work / "compressed-v1", work / "before"

    runs: dict[str, list] = {mode: [] for mode in folders}
    for _ in range(args.repeats):  # interleaved, so load from other jobs hits every mode alike
        for mode, folder in folders.items():
            rec = _child(mode, folder, code[mode], work)
            logits = torch.load(rec.pop("logits_file"))
            if mode != "dense":
                rec["logits_identical"] = bool(torch.equal(logits, reference))
            runs[mode].append(rec)

    def mib(x):
        return round(x / MIB, 1)

    def med(recs, key):
        return statistics.median(r[key] for r in recs)

    labels = {"dense": "dense from_pretrained", "compressed": "compressed from_pretrained (meta + quantizer)",
              "before": f"compressed load_compressed at {args.before_commit} (dense model built first)"}
    summary = {}
    for mode, recs in runs.items():
        base = med(recs, "rss_after_imports")
        summary[mode] = {
            "what": labels[mode],
            "params": recs[0]["params"],
            "safetensors_mib": mib(_folder_bytes(folders[mode])),
            "rss_after_imports_mib": mib(base),
            "peak_after_load_mib": mib(med(recs, "peak_rss")),
            "peak_after_load_above_imports_mib": mib(med(recs, "peak_rss") - base),
            "peak_after_forward_mib": mib(med(recs, "peak_rss_after_forward")),
            "peak_after_forward_above_imports_mib": mib(med(recs, "peak_rss_after_forward") - base),
            "rss_anon_after_forward_mib": mib(med(recs, "rss_anon_after_forward")),
            "rss_file_after_forward_mib": mib(med(recs, "rss_file_after_forward")),
            "all_peak_after_forward_mib": [mib(r["peak_rss_after_forward"]) for r in recs],
            **({"logits_identical": all(r["logits_identical"] for r in recs)} if mode != "dense" else {}),
        }
    payload = {
        "model": {"config": SHAPE, "dtype": "float32", **built,
                  "dense_weights_mib": mib(built["dense_params"] * 4),
                  "compressed_weights_mib": mib(built["compressed_params"] * 4)},
        "repeats": args.repeats,
        "results": summary,
    }
    print(json.dumps(payload, indent=2))
    _common.write_json(args.output, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
