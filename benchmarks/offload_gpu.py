"""Device memory of compressing an 8B-shaped model under a GPU memory cap (issue 13). NOT RUN YET.

No GPU was available when this script was written; it was only smoke-tested on the CPU with a
tiny shape (``--device cpu``, where the cap sends layers to disk instead of host memory).

A random model of the Llama-3-8B shape (32 layers, hidden 4096, intermediate 14336, 32 heads,
8 key/value heads, vocabulary 128,256, bfloat16, about 8.0B parameters, 16 GB) is written to
``--work`` one decoder layer at a time (never whole in memory). Each mode runs in its own
process:

* ``capped``: ``from_pretrained(path, device_map="auto", max_memory={0: cap, "cpu": ...})``:
  the layers that do not fit under ``--cap`` are offloaded to host memory (accelerate's CPU
  offload, execution device ``cuda:0``), then ``adapters.compress``.
* ``resident`` (with ``--compare``): the whole model on ``cuda:0``, then ``adapters.compress``.

Recorded per mode: ``torch.cuda.max_memory_allocated`` during loading and during the call,
the peak RSS, the ranks, and the logits on fixed tokens (compared between the modes). The
question it answers: is the device peak of the capped run about the cap plus one layer plus
its statistics, whatever the model size? (docs/adapters.md, "Models bigger than one device",
gives the arithmetic for Llama-3-70B on one 80 GB GPU.)

Usage (one GPU; about 17 GB of disk for the checkpoint; ``--layers 4`` for a short run)::

    .venv/bin/python benchmarks/offload_gpu.py --cap 6GiB --compare       # writes results/offload_gpu.json
    .venv/bin/python benchmarks/offload_gpu.py --layers 4 --nsamples 32 --cap 2GiB --compare
    .venv/bin/python benchmarks/offload_gpu.py --device cpu --layers 2 --hidden 64 --intermediate 128 \
        --heads 4 --kv-heads 2 --vocab 256 --nsamples 4 --seqlen 32 --cap 200KB --output offload_gpu_cpu_smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: E402  (puts the repository root on sys.path)


def write_checkpoint(args, path: Path) -> int:
    """A random model of the requested shape as safetensors shards, one decoder layer per shard."""
    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False,
    )
    with init_empty_weights():
        shell = LlamaForCausalLM(cfg)
    path.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(path)
    gen = torch.Generator().manual_seed(args.seed)
    groups: dict[str, list] = {}
    for name, p in shell.named_parameters():
        key = name.split(".")[2] if name.startswith("model.layers.") else "rest"
        groups.setdefault(key, []).append((name, p.shape))
    weight_map, total = {}, 0
    for key, items in groups.items():
        shard = f"model-{key}.safetensors"
        tensors = {}
        for name, shape in items:
            if len(shape) == 1:  # RMSNorm weights
                t = torch.ones(shape)
            else:
                t = torch.randn(shape, generator=gen) * (shape[-1] ** -0.5)
            tensors[name] = t.to(torch.bfloat16)
            weight_map[name] = shard
            total += t.numel()
        save_file(tensors, str(path / shard), metadata={"format": "pt"})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return total


def child(args, work: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    import adapters

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    if args.child == "capped":
        key = 0 if cuda else "cpu"
        model = AutoModelForCausalLM.from_pretrained(
            work / "model", dtype=torch.bfloat16, device_map="auto",
            max_memory={key: args.cap, **({"cpu": args.host} if cuda else {})},
            offload_folder=work / "offload",
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.bfloat16, device_map={"": args.device})
    load_s = time.perf_counter() - t
    model.eval()
    placement = {}
    for where in getattr(model, "hf_device_map", {"": args.device}).values():
        placement[str(where)] = placement.get(str(where), 0) + 1
    load_peak = torch.cuda.max_memory_allocated() if cuda else None
    gen = torch.Generator().manual_seed(args.seed)
    calib = torch.randint(0, args.vocab, (args.nsamples, args.seqlen), generator=gen)
    probe = torch.randint(0, args.vocab, (2, 128), generator=gen)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    t = time.perf_counter()
    model, report = adapters.compress(model, adapters.InterpolativeConfig(reduction=args.reduction, seed=args.seed),
                                      calibration=calib, progress=False)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t
    compress_peak = torch.cuda.max_memory_allocated() if cuda else None
    with torch.no_grad():
        logits = model(probe.to(device)).logits.float().cpu()
    torch.save(logits, work / f"logits-{args.child}.pt")
    return {
        "mode": args.child, "placement_counts": placement, "load_s": load_s, "compress_wall_s": wall,
        "device_allocated_before_compress_gib": before / 2**30 if cuda else None,
        "device_peak_load_gib": load_peak / 2**30 if cuda else None,
        "device_peak_compress_gib": compress_peak / 2**30 if cuda else None,
        "ru_maxrss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "params_before": report.params_before, "params_after": report.params_after,
        "calibration_tokens": report.options["calibration_tokens"],
        "ranks": {m.name: m.rank for m in report.modules},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--cap", default="6GiB", help="max_memory of the device (accelerate's format, e.g. 6GiB)")
    p.add_argument("--host", default="200GiB", help="max_memory of the host for the offloaded layers")
    p.add_argument("--compare", action="store_true", help="also compress the model fully resident on the device")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=14336)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--reduction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="folder for the checkpoint and offload files (default: a temporary one)")
    p.add_argument("--output", default="offload_gpu.json", help="JSON name under benchmarks/results/")
    p.add_argument("--child", choices=("capped", "resident"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args, Path(args.work))), flush=True)
        return 0
    if not _common.cuda_or_skip(args.device):  # before minutes of writing a random checkpoint
        return 0

    with tempfile.TemporaryDirectory(prefix="offload_gpu_", dir=args.work) as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        params = write_checkpoint(args, work / "model")
        print(f"random model: {params:,} parameters, written in {time.perf_counter() - t:.0f} s", flush=True)
        rows = {}
        for mode in ("capped", "resident") if args.compare else ("capped",):
            argv_ = [a for a in (argv if argv is not None else sys.argv[1:])]
            cmd = [sys.executable, __file__, *argv_, "--child", mode, "--work", tmp]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.stderr.write(out.stdout + out.stderr)
                return out.returncode
            rows[mode] = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
            print(json.dumps({k: v for k, v in rows[mode].items() if k != "ranks"}), flush=True)
        doc = {"results": rows}
        if args.compare:
            import torch

            a, b = (torch.load(work / f"logits-{m}.pt") for m in ("resident", "capped"))
            doc |= {"same_ranks": rows["capped"]["ranks"] == rows["resident"]["ranks"],
                    "max_abs_logit_difference": float((a - b).abs().max()), "max_abs_logit": float(a.abs().max())}
            rows["capped"].pop("ranks")
            print({k: v for k, v in doc.items() if k != "results"})
    _common.write_json(args.output, {
        "model": {"kind": "random LlamaForCausalLM, bfloat16 (Llama-3-8B shape by default)", "parameters": params,
                  "layers": args.layers, "hidden": args.hidden, "intermediate": args.intermediate,
                  "heads": args.heads, "kv_heads": args.kv_heads, "vocab": args.vocab},
        "config": {"method": "interpolative", "reduction": args.reduction, "nsamples": args.nsamples,
                   "seqlen": args.seqlen, "seed": args.seed, "cap": args.cap, "device": args.device},
        **doc,
    }, device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
