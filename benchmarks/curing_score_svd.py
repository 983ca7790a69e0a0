"""CURing's fit with a randomized SVD of the score matrix instead of the full one (issue 14, item 3).

CURing selects rows and columns by DEIM on the top ``rank`` singular vectors of the WANDA score
``|W| ||x||``; the full float64 SVD of that score dominated its time at the Llama-3.1-8B shape
(41.9 s on an H100 for 30 matrices, docs/benchmarks.md item 3). ``adapters`` now takes a randomized
SVD (2 power iterations, oversampling 10, drawn from the config's seed) above 512 x 512. This
times the old and the new fit side by side (interleaved, medians) on the 8B shapes of CURing's
targets (q 4096 x 4096, k 1024 x 4096, gate 14336 x 4096; rank 256) with random weights and
input norms, and reports how many of the selected rows and columns coincide and the relative
errors ``||(W - CUR) D^{1/2}||_F / ||W D^{1/2}||_F`` of both.

On a 2-core CPU the default is the shapes halved (``--scale 0.5``, rank 128): a ratio, not the
GPU's absolute time. On CUDA: ``--device cuda --scale 1``.

Usage::

    .venv/bin/python benchmarks/curing_score_svd.py                      # CPU, shapes halved
    python benchmarks/curing_score_svd.py --device cuda --scale 1         # the 8B shapes on a GPU
"""

from __future__ import annotations

import argparse
import sys
from types import SimpleNamespace

import _common  # noqa: E402  (puts the repository root on sys.path)

SHAPES = {"q_proj": (4096, 4096), "k_proj": (1024, 4096), "gate_proj": (14336, 4096)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--scale", type=float, default=0.5, help="shape scale (1 = the 8B shapes)")
    p.add_argument("--rank", type=int, default=None, help="default 256 * scale")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default=None, help="JSON name under benchmarks/results/")
    args = p.parse_args(argv)
    threads = _common.limit_threads(args.threads)

    import torch
    from torch import nn

    import curlinalg
    from adapters import CURingConfig
    from adapters.methods import Metrics, method_for

    rank = args.rank or int(256 * args.scale)
    cfg = CURingConfig(seed=0)
    method = method_for(cfg)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
    real = curlinalg.truncated_svd
    rows = []
    for name, (m, n) in SHAPES.items():
        m, n = int(m * args.scale), int(n * args.scale)
        gen = torch.Generator().manual_seed(0)
        lin = nn.Linear(n, m, bias=False).to(args.device)
        X = torch.randn(2048, n, generator=gen)
        st = SimpleNamespace(sq_sum=((X * X).sum(0) * torch.rand(n, generator=gen) ** 4).to(args.device),
                             gram=None, cross=None)

        def fit(kind):
            def run():
                curlinalg.truncated_svd = lambda *a, **k: real(*a, **(k | {"kind": kind}))
                try:
                    return method.fit(cfg, lin, st, Metrics(0.0), rank)
                finally:
                    curlinalg.truncated_svd = real
            return run

        res = _common.side_by_side({"full SVD": fit("exact"), "randomized SVD": fit("auto")},
                                   repeats=args.repeats, sync=sync)
        old, new = res["full SVD"]["result"], res["randomized SVD"]["result"]
        rows.append({
            "module": name, "shape": [m, n], "rank": rank,
            "full_s": res["full SVD"]["median_s"], "randomized_s": res["randomized SVD"]["median_s"],
            "speedup": res["full SVD"]["median_s"] / res["randomized SVD"]["median_s"],
            "rows_shared": len(set(old.rows) & set(new.rows)) / rank,
            "cols_shared": len(set(old.cols) & set(new.cols)) / rank,
            "rel_error_full": old.rel_error, "rel_error_randomized": new.rel_error,
        })
        print(rows[-1], flush=True)
    print(_common.table(rows, [
        ("module", "module", ""), ("shape", "shape", ""), ("full_s", "full SVD s", ".3f"),
        ("randomized_s", "randomized s", ".3f"), ("speedup", "speed-up", ".1f"),
        ("rows_shared", "rows shared", ".2f"), ("cols_shared", "cols shared", ".2f"),
        ("rel_error_full", "rel. error full", ".4f"), ("rel_error_randomized", "rel. error randomized", ".4f"),
    ]))
    _common.write_json(args.output or f"curing_score_svd_{args.device.split(':')[0]}.json", {
        "what": "CURing fit (adapters.methods) with the score matrix's full SVD against the randomized one",
        "threads": threads, "scale": args.scale, "rank": rank, "results": rows,
    }, device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
