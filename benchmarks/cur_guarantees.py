"""Issue 10's findings, measured: bounds near the numerical rank, tolerance mode, cross core,
leverage sampling at full rank, certificate sharpness.

For each finding it records what the current code gives beside what the earlier code path gave
(the plain product ``C @ (U @ R)``, the untruncated cross core), and for tolerance mode the rank
found against the smallest rank whose true error meets the target (brute force) and the time
against a rank-mode call at the same rank (interleaved, one thread). Writes
``benchmarks/results/cur_guarantees.json``.

    .venv/bin/python benchmarks/cur_guarantees.py
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg as sla

import _common
from curlinalg import certify, cur
from curlinalg.testing import known_spectrum


def _err(A, X) -> float:
    return float(np.linalg.norm(A.astype(np.float64) - X.astype(np.float64), 2))


def near_numerical_rank() -> list[dict]:
    A = known_spectrum(300, 250, np.exp(-np.arange(250) / 8), rng=1)
    H = sla.hilbert(200)
    rows = []
    for name, M, ranks in (("exp(-j/8) 300x250", A, (157, 200, 241)), ("hilbert(200)", H, (15, 20))):
        for k in ranks:
            res = cur(M, rank=k)
            rows.append({
                "matrix": name, "rank": k, "error": _err(M, res.to_dense()), "bound": res.bound,
                "plain_product_error": _err(M, res.C @ (res.U @ res.R)),
            })
    return rows


def _noisy_exponential(m: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    A = known_spectrum(m, n, np.exp(-np.arange(min(m, n)) / 10), rng=1)
    return A + 1e-6 * rng.standard_normal((m, n)) / np.sqrt(max(m, n))


def _minimal_rank(A, target, start, stop) -> int | None:
    for k in range(max(start, 1), stop + 1):
        if _err(A, cur(A, rank=k, rng=0).to_dense()) <= target:
            return k
    return None


def tolerance_mode() -> list[dict]:
    cases = [
        ("exp(-j/10)+noise 2000x2000", _noisy_exponential(2000, 2000), 1e-3),
        ("exp(-j/10)+noise 2000x500", _noisy_exponential(2000, 500), 1e-2),
        ("exp(-j/8) 300x250", known_spectrum(300, 250, np.exp(-np.arange(250) / 8), rng=1), 1e-12),
        ("exp(-j/8) 300x250", known_spectrum(300, 250, np.exp(-np.arange(250) / 8), rng=1), 1e-20),
        ("gaussian float32 300x200",
         np.random.default_rng(0).standard_normal((300, 200)).astype(np.float32), 1e-8),
    ]
    rows = []
    for name, A, rtol in cases:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = cur(A, rtol=rtol, rng=0)
        k = res.rank
        timed = _common.side_by_side(
            {"tolerance": lambda: cur(A, rtol=rtol, rng=0), "rank": lambda: cur(A, rank=k, rng=0)},
            repeats=3,
        )
        s = np.linalg.svd(A.astype(np.float64), compute_uv=False)
        target = rtol * s[0]
        reached = res.certificate.bound <= target
        minimal = _minimal_rank(A, target, int(np.sum(s > target)), k) if reached else None
        rows.append({
            "matrix": name, "rtol": rtol, "rank": k, "certificate": res.certificate.bound,
            "error": _err(A, res.to_dense()), "target": target, "reached": reached,
            "svd_rank": int(np.sum(s > target)), "minimal_rank": minimal,
            "rank_ratio": None if minimal is None else k / minimal,
            "time_s": timed["tolerance"]["median_s"], "rank_mode_time_s": timed["rank"]["median_s"],
            "time_ratio": timed["tolerance"]["median_s"] / timed["rank"]["median_s"],
            "warnings": [str(w.message) for w in caught],
        })
    return rows


def cross_core() -> list[dict]:
    rows = []
    for method in ("deim", "qdeim", "maxvol"):
        ratios, raw = [], []
        for seed in range(20):
            A = np.random.default_rng(seed).standard_normal((300, 200))
            s11 = np.linalg.svd(A, compute_uv=False)[10]
            ratios.append(_err(A, cur(A, rank=10, method=method, core="cross").to_dense()) / s11)
            # the earlier default: no truncation beyond max(r, c) * eps
            untruncated = cur(A, rank=10, method=method, core="cross", core_rtol=10 * 2.2e-16)
            raw.append(_err(A, untruncated.C @ (untruncated.U @ untruncated.R)) / s11)
        rows.append({
            "method": method, "median_ratio": float(np.median(ratios)), "max_ratio": max(ratios),
            "untruncated_median_ratio": float(np.median(raw)), "untruncated_max_ratio": max(raw),
        })
    return rows


def leverage_full_rank() -> list[dict]:
    rows = []
    for shape in ((50, 2000), (2000, 50), (60, 60)):
        A = np.random.default_rng(0).standard_normal(shape)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = cur(A, rank=min(shape), method="leverage_sampling", rng=0)
        rows.append({
            "shape": list(shape), "rows_kept": int(res.rows.shape[0]),
            "cols_kept": int(res.cols.shape[0]),
            "relative_error": _err(A, res.to_dense()) / float(np.linalg.norm(A, 2)),
            "bound": res.bound, "warned": bool(caught),
        })
    return rows


def certificate_sharpness() -> list[dict]:
    A = known_spectrum(2000, 1000, np.exp(-np.arange(1000) / 20), rng=0)
    rows = []
    for k in (20, 60):
        res = cur(A, rank=k, rng=0)
        err = _err(A, res.to_dense())
        cert = certify(A, res, rng=1)
        one_pass = certify(lambda X: A @ X, res, rng=1)
        rows.append({
            "rank": k, "error": err, "power_bound_ratio": cert.bound / err,
            "power_estimate_ratio": cert.estimate / err, "one_pass_bound_ratio": one_pass.bound / err,
        })
    return rows


def main() -> None:
    threads = _common.limit_threads(1)
    payload = {
        "threads": threads,
        "near_numerical_rank": near_numerical_rank(),
        "tolerance_mode": tolerance_mode(),
        "cross_core_gaussian_300x200_rank10": cross_core(),
        "leverage_sampling_full_rank": leverage_full_rank(),
        "certificate_sharpness_2000x1000": certificate_sharpness(),
    }
    print(_common.table(payload["near_numerical_rank"], [
        ("matrix", "matrix", ""), ("rank", "rank", "d"), ("error", "error", ".2e"),
        ("bound", "bound", ".2e"), ("plain_product_error", "C@(U@R) error", ".2e"),
    ]))
    print(_common.table(payload["tolerance_mode"], [
        ("matrix", "matrix", ""), ("rtol", "rtol", ".0e"), ("rank", "rank", "d"),
        ("minimal_rank", "minimal", ""), ("svd_rank", "SVD rank", "d"), ("reached", "reached", ""),
        ("error", "error", ".2e"), ("time_ratio", "time / rank mode", ".2f"),
    ]))
    print(_common.table(payload["cross_core_gaussian_300x200_rank10"], [
        ("method", "method", ""), ("median_ratio", "median err/s11", ".2f"),
        ("max_ratio", "max", ".2f"), ("untruncated_median_ratio", "untruncated median", ".1f"),
        ("untruncated_max_ratio", "untruncated max", ".1f"),
    ]))
    print(_common.table(payload["leverage_sampling_full_rank"], [
        ("shape", "shape", ""), ("rows_kept", "rows", "d"), ("cols_kept", "cols", "d"),
        ("relative_error", "rel. error", ".1e"), ("bound", "bound", ".1e"),
    ]))
    print(_common.table(payload["certificate_sharpness_2000x1000"], [
        ("rank", "rank", "d"), ("power_bound_ratio", "power bound / error", ".3f"),
        ("power_estimate_ratio", "estimate / error", ".3f"),
        ("one_pass_bound_ratio", "one-pass bound / error", ".2f"),
    ]))
    _common.write_json("cur_guarantees.json", payload)


if __name__ == "__main__":
    main()
