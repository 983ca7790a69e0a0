"""Randomized CUR on CPU against sklearn's randomized SVD and scipy's ID (issue 15, item 6).

For each size (2000 x 2000 at rank 50, 4000 x 4000 at rank 100) and each spectrum (exponential
``exp(-j/10)``, polynomial ``1/(j+1)``), float64 matrices ``U diag(s) V^T`` with Haar-random
factors are timed side by side in one process (interleaved rounds, medians, one BLAS thread):

* ``curlinalg.cur(method="randomized")`` with its default core (``"optimal"``: one pass over
  ``A`` for :math:`Q_C^TAQ_R`) and with ``core="sketch"`` (the core from the sketch
  :math:`QQ^TA`, one pass fewer; its bound adds the sketch's certified residual);
* sklearn ``randomized_svd`` with the same oversampling (10) and power iterations (2), with
  each of its normalisers: ``"LU"`` (what ours uses between power steps), ``"QR"``, and
  ``"none"`` (its choice for ``n_iter <= 2``);
* scipy ``interp_decomp(A, k, rand=True)`` (one round, no warm-up).

Then, outside the timed rounds, cProfile splits our time per call into the products with ``A``
and the other kernels (:data:`PHASES`): what limits the ratio to sklearn.

Errors are ``||A - approx||_F / ||A - A_k||_F`` (the optimum, known from ``s``). A CUR keeps
``k`` actual columns and rows, so at the same rank its error is above the truncated SVD's by the
factor its selection costs (``eta``); the table says how much, beside the time.

Usage::

    .venv/bin/python benchmarks/randomized_cpu.py                  # about 4 minutes on 2 cores
    .venv/bin/python benchmarks/randomized_cpu.py --sizes 1000:30 --repeats 3   # quick look
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from scipy.linalg import interpolative as sli

import _common  # noqa: E402  (puts the repository root on sys.path)

import curlinalg  # noqa: E402
from curlinalg.testing import exponential_spectrum, known_spectrum, polynomial_spectrum  # noqa: E402

OVERSAMPLE = 10
POWER_ITERS = 2
SPECTRA = {
    "exponential": lambda n: exponential_spectrum(n, decay=0.1),
    "polynomial": lambda n: polynomial_spectrum(n, power=1.0),
}
TIME_TARGET = 1.2
ID_TARGET = 10.0


def contenders(A, k, seed):
    from sklearn.utils.extmath import randomized_svd

    def ours(core):
        return lambda: curlinalg.cur(A, rank=k, method="randomized", core=core,
                                     oversample=OVERSAMPLE, power_iters=POWER_ITERS, rng=seed)

    def sklearn(normalizer):
        return lambda: randomized_svd(A, k, n_oversamples=OVERSAMPLE, n_iter=POWER_ITERS,
                                      power_iteration_normalizer=normalizer, random_state=seed)

    fast = {
        "curlinalg randomized (core=optimal)": ours("optimal"),
        "curlinalg randomized (core=sketch)": ours("sketch"),
        "sklearn randomized_svd (LU)": sklearn("LU"),
        "sklearn randomized_svd (QR)": sklearn("QR"),
        "sklearn randomized_svd (none)": sklearn("none"),
    }
    slow = {"scipy interp_decomp rand=True": lambda: sli.interp_decomp(A, k, rand=True, rng=seed)}
    return fast, slow


def error_of(name, A, k, result):
    if name.startswith("curlinalg"):
        return float(np.linalg.norm(A - result.to_dense()))
    if name.startswith("sklearn"):
        U, s, Vt = result
        return float(np.linalg.norm(A - (U * s) @ Vt))
    idx, proj = result
    return float(np.linalg.norm(A - sli.reconstruct_matrix_from_id(A[:, idx[:k]], idx, proj)))


def targets(by):
    out = {}
    sk = by["sklearn randomized_svd (LU)"]["median_s"]
    idt = by["scipy interp_decomp rand=True"]["median_s"]
    for core in ("optimal", "sketch"):
        ours = by[f"curlinalg randomized (core={core})"]
        r = ours["median_s"] / sk
        out[f"core={core}: <= {TIME_TARGET}x sklearn randomized_svd (n_iter=2, LU)"] = _common.verdict(
            r <= TIME_TARGET, f"{r:.2f}x; error {ours['error_ratio']:.2f}x optimal against "
            f"sklearn's {by['sklearn randomized_svd (LU)']['error_ratio']:.2f}x")
        r = idt / ours["median_s"]
        out[f"core={core}: >= {ID_TARGET:g}x faster than interp_decomp"] = _common.verdict(
            r >= ID_TARGET, f"{r:.1f}x")
    return out


#: Where a call's time goes, by the function that spends it (cProfile's own time).
PHASES = {
    "products with A (_operand matmat/rmatmat)": ("_operand.py", ("matmat", "rmatmat")),
    "QR (range finder's last step; C and R for the core)": ("_linalg.py", ("qr",)),
    "SVD (the sketch's B; C's and R's small factors; selection constants)": ("_linalg.py", ("svd", "svdvals")),
    "pivoted QR (Q-DEIM selection)": ("_decomp_qr.py", ("safecall",)),
    "LU normalisation of the power steps": ("_decomp_lu.py", ("lu",)),
}


def profile_phases(A, k, seed, core, rounds=3):
    """Median-free split of ``rounds`` calls' time (seconds per call) into :data:`PHASES`."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(rounds):
        curlinalg.cur(A, rank=k, method="randomized", core=core, oversample=OVERSAMPLE,
                      power_iters=POWER_ITERS, rng=seed)
    prof.disable()
    stats = pstats.Stats(prof).stats
    total = sum(v[2] for v in stats.values()) / rounds  # own times add up to the whole
    out = {name: 0.0 for name in PHASES}
    for (file, _, func), v in stats.items():
        for name, (suffix, funcs) in PHASES.items():
            if file.endswith(suffix) and func in funcs:
                out[name] += v[2] / rounds
    out["everything else"] = total - sum(out.values())
    out["total"] = total
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["2000:50", "4000:100"], help="n:rank pairs")
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds of the fast contenders")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (0 = library default)")
    p.add_argument("--output", default="randomized_cpu.json")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile split of our time")
    args = p.parse_args(argv)
    threads = _common.limit_threads(args.threads or None)
    warnings.simplefilter("ignore", curlinalg.RankDeficiencyWarning)
    t0 = time.perf_counter()
    cases = []
    for size in args.sizes:
        n, k = (int(x) for x in size.split(":"))
        for si, (spec, spectrum) in enumerate(SPECTRA.items()):
            s = spectrum(n)
            A = known_spectrum(n, n, s, rng=args.seed + si)
            opt = float(np.sqrt(np.sum(s[k:] ** 2)))
            fast, slow = contenders(A, k, args.seed)
            print(f"\n[{spec}] {n} x {n}, rank {k}; timing ...", flush=True)
            timed = _common.side_by_side(fast, repeats=args.repeats)
            timed.update(_common.side_by_side(slow, repeats=1, warmup=False))
            ref = timed["sklearn randomized_svd (LU)"]["median_s"]
            rows = []
            for name, r in timed.items():
                rows.append({"name": name, "median_s": r["median_s"], "times_s": r["times_s"],
                             "time_ratio_to_sklearn_lu": r["median_s"] / ref,
                             "error_ratio": error_of(name, A, k, r["result"]) / opt})
            res = timed["curlinalg randomized (core=sketch)"]["result"]
            print(_common.table(rows, [("name", "contender", ""), ("median_s", "median s", ".3f"),
                                       ("time_ratio_to_sklearn_lu", "time / sklearn (LU)", ".2f"),
                                       ("error_ratio", "error / optimal", ".3f")]))
            by = {r["name"]: r for r in rows}
            case = {"n": n, "rank": k, "spectrum": spec, "optimal_error_fro": opt, "rows": rows,
                    "sketch_residual": res.sketch_residual, "sigma_k_plus_1": float(s[k]),
                    "targets": targets(by)}
            for t, v in case["targets"].items():
                print(f"  {t}: {v}")
            if not args.no_profile:
                case["profile_s_per_call"] = {c: profile_phases(A, k, args.seed, c) for c in ("optimal", "sketch")}
                for c, ph in case["profile_s_per_call"].items():
                    print(f"  where core={c} spends its time (s per call): "
                          + "; ".join(f"{n}: {v:.3f}" for n, v in ph.items()))
            cases.append(case)
            del A
    _common.write_json(args.output, {"oversample": OVERSAMPLE, "power_iters": POWER_ITERS,
                                     "repeats": args.repeats, "threads": threads, "cases": cases,
                                     "wall_s": time.perf_counter() - t0})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
