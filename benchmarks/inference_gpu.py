"""Inference (issue 4, item 4): CURLinear forward against dense nn.Linear on the GPU, bf16.

Shapes of a Llama-3-8B MLP at rank 256: ``4096 -> 14336`` (gate/up) and ``14336 -> 4096``
(down), for 1 token (decoding) and 2048 tokens (prefill). The ideal speedup is the FLOP ratio
``m n / (r (m + n) + r^2)`` (12.3x here). Also timed, to see what limits the three-GEMM
forward: the same product with ``U`` folded into ``R`` (two GEMMs), and each of the three GEMMs
alone. Target: measured speedup >= 0.7x the ideal at 2048 tokens.

Times are medians of CUDA-event timings after warm-up, under ``torch.inference_mode``.

Usage::

    .venv/bin/python benchmarks/inference_gpu.py
    .venv/bin/python benchmarks/inference_gpu.py --device cpu --small    # smoke run (sizes / 8)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import _common  # noqa: E402  (puts the repository root on sys.path)

TARGET = 0.7


def timer(fn, device, repeats):
    if str(device).startswith("cuda"):
        return _common.cuda_time(fn, repeats=repeats, warmup=5)
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "times_s": times}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="sizes / 8 (smoke run)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--rank", type=int, default=256)
    p.add_argument("--tokens", nargs="+", type=int, default=[1, 2048])
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    if not _common.cuda_or_skip(args.device):
        return 0
    import torch
    from torch import nn

    from adapters import CURLinear

    dev = torch.device(args.device)
    if dev.type != "cuda":
        _common.limit_threads(1)
    dtype = getattr(torch, args.dtype)
    scale = 8 if args.small else 1
    r = args.rank // scale
    repeats = min(args.repeats, 10) if args.small else args.repeats
    gen = torch.Generator(device=dev).manual_seed(0)
    rows = []
    with torch.inference_mode():
        for d_in, d_out in ((4096, 14336), (14336, 4096)):
            n, m = d_in // scale, d_out // scale
            dense = nn.Linear(n, m, bias=False, device=dev, dtype=dtype)
            C = torch.randn(m, r, device=dev, dtype=dtype, generator=gen) / r**0.5
            U = torch.randn(r, r, device=dev, dtype=dtype, generator=gen) / r**0.5
            R = torch.randn(r, n, device=dev, dtype=dtype, generator=gen) / n**0.5
            cur = CURLinear(C, U, R)
            UR = (U @ R).contiguous()
            ideal = (m * n) / (r * (m + n) + r * r)
            for tokens in args.tokens:
                x = torch.randn(tokens, n, device=dev, dtype=dtype, generator=gen)
                xr = x @ R.T
                xru = xr @ U.T
                fns = {
                    "dense nn.Linear": lambda: dense(x),
                    "CURLinear (3 GEMMs)": lambda: cur(x),
                    "U folded into R (2 GEMMs)": lambda: nn.functional.linear(nn.functional.linear(x, UR), C),
                    "GEMM x R^T": lambda: nn.functional.linear(x, R),
                    "GEMM (xR^T) U^T": lambda: nn.functional.linear(xr, U),
                    "GEMM (xR^TU^T) C^T": lambda: nn.functional.linear(xru, C),
                }
                t = {name: timer(fn, dev, repeats)["median_s"] for name, fn in fns.items()}
                speedup = t["dense nn.Linear"] / t["CURLinear (3 GEMMs)"]
                row = {
                    "shape": f"{n}->{m}", "tokens": tokens, "rank": r, "ideal": ideal,
                    "dense_us": 1e6 * t["dense nn.Linear"], "cur_us": 1e6 * t["CURLinear (3 GEMMs)"],
                    "folded_us": 1e6 * t["U folded into R (2 GEMMs)"],
                    "gemm_R_us": 1e6 * t["GEMM x R^T"], "gemm_U_us": 1e6 * t["GEMM (xR^T) U^T"],
                    "gemm_C_us": 1e6 * t["GEMM (xR^TU^T) C^T"],
                    "speedup": speedup, "fraction_of_ideal": speedup / ideal,
                    "folded_speedup": t["dense nn.Linear"] / t["U folded into R (2 GEMMs)"],
                }
                if tokens == max(args.tokens):
                    measured = dev.type == "cuda" and not args.small
                    row["target"] = _common.verdict(
                        speedup / ideal >= TARGET if measured else None,
                        f"{speedup:.2f}x = {speedup / ideal:.2f} of the ideal {ideal:.1f}x",
                    )
                rows.append(row)
    print(_common.table(rows, [
        ("shape", "in->out", ""), ("tokens", "tokens", ""), ("dense_us", "dense us", ".1f"),
        ("cur_us", "CUR us", ".1f"), ("folded_us", "2-GEMM us", ".1f"), ("gemm_R_us", "xR^T us", ".1f"),
        ("gemm_U_us", "U us", ".1f"), ("gemm_C_us", "C^T us", ".1f"), ("speedup", "speedup", ".2f"),
        ("ideal", "ideal", ".1f"), ("fraction_of_ideal", "of ideal", ".2f")]))
    for row in rows:
        if "target" in row:
            print(f"target >= {TARGET}x ideal at {row['tokens']} tokens, {row['shape']}: {row['target']}")
    measured = dev.type == "cuda" and not args.small
    suffix = "" if measured else f"_{dev.type}{'_small' if args.small else ''}"
    path = _common.write_json(args.output or f"inference_gpu{suffix}.json", {
        "device": str(dev), "dtype": args.dtype, "small": args.small, "rows": rows,
    }, device=str(dev))
    _plot(rows, path.with_suffix(".png"))
    return 0


def _plot(rows, path):
    fig, ax = _common.subplots(figsize=(7, 4))
    labels = [f"{r['shape']}\n{r['tokens']} tok" for r in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["speedup"] for r in rows], width=0.4, label="measured (CURLinear)")
    ax.bar([x + 0.2 for x in xs], [TARGET * r["ideal"] for r in rows], width=0.4, color="gray", alpha=0.5,
           label=f"{TARGET} x ideal FLOP ratio")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("speedup over dense nn.Linear")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    _common.save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
