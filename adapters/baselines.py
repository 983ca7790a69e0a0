"""SVD-type baselines for the quality benchmark: plain, activation-scaled and whitened SVD.

Each compressed weight becomes a :class:`LowRankLinear` ``W ~ A B`` (``r (m + n)`` parameters),
with ranks allocated globally to the same exact budget as :func:`adapters.compress` (same
allocator, cost ``r (m + n)``, break-even ``r (m + n) < m n``).  These exist to measure the CUR
methods against; they keep every matrix's eigendecomposition in memory and are meant for small
models.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ._common import count_parameters
from .calibration import LayerRunner, prepare_calibration, record_layer
from .compress import ALL_TARGETS, CompressionReport, ModuleReport, _ridged, _swap, allocate_ranks, find_targets

__all__ = ["KINDS", "LowRankLinear", "compress_svd", "svd_params"]

KINDS = ("plain", "scaled", "whitened")


def svd_params(m: int, n: int, r: int, /) -> int:
    """Parameters of a rank-``r`` factorisation ``A B`` of an ``m x n`` weight: ``r (m + n)``."""
    return r * (m + n)


def _svd_break_even(m: int, n: int) -> int:
    return (m * n - 1) // (m + n)


class LowRankLinear(nn.Module):
    """``y = x B^T A^T + b`` with ``A`` (out x r) and ``B`` (r x in)."""

    def __init__(self, A, B, /, *, bias=None):
        super().__init__()
        if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[0]:
            raise ValueError(f"expected A (m x r) and B (r x n), got {tuple(A.shape)} and {tuple(B.shape)}")
        self.out_features, self.rank = A.shape
        self.in_features = B.shape[1]
        self.A = nn.Parameter(A.detach().clone(memory_format=torch.contiguous_format))
        self.B = nn.Parameter(B.detach().clone(memory_format=torch.contiguous_format))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    def forward(self, x):
        y = nn.functional.linear(nn.functional.linear(x, self.B), self.A)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def _factor_source(W64, st, kind, ridge):
    """Matrix ``M = W T`` whose truncated SVD is taken, and the transform ``T``."""
    Hr = _ridged(st.gram, ridge)
    if kind == "scaled":
        d = torch.sqrt(torch.diagonal(Hr) / max(st.tokens, 1))
        return W64 * d, ("diag", d)
    L = torch.linalg.cholesky(Hr)
    return W64 @ L, ("tri", L)


def _eig_small(M):
    m, n = M.shape
    if m <= n:
        vals, vecs = torch.linalg.eigh(M @ M.T)
        return vals.flip(-1).clamp_min(0.0), vecs.flip(-1), "left"
    vals, vecs = torch.linalg.eigh(M.T @ M)
    return vals.flip(-1).clamp_min(0.0), vecs.flip(-1), "right"


def _factors(M, T, vecs, side, r):
    V = vecs[:, :r]
    A, Bm = (V, V.T @ M) if side == "left" else (M @ V, V.T)
    if T is None:
        return A, Bm
    kind, X = T
    if kind == "diag":
        return A, Bm / X
    return A, torch.linalg.solve_triangular(X, Bm, upper=False, left=False)


@torch.no_grad()
def compress_svd(
    model: nn.Module,
    /,
    *,
    calibration,
    kind: str = "whitened",
    tokenizer=None,
    reduction: float | None = None,
    target_params: int | None = None,
    targets=ALL_TARGETS,
    layers=None,
    nsamples: int = 128,
    seqlen: int = 512,
    batch_size: int = 8,
    ridge: float = 1e-6,
    token_weighting: str = "none",
    seed: int = 0,
    progress: bool = True,
):
    """Truncated-SVD baseline with global rank allocation to an exact budget (in place).

    Parameters
    ----------
    model : transformers PreTrainedModel
    calibration, tokenizer, nsamples, seqlen, batch_size, seed
        As :func:`adapters.compress`.
    kind : {"plain", "scaled", "whitened"}
        ``"plain"``: SVD of ``W``.  ``"scaled"``: SVD of ``W diag(rms(x))`` (ASVD-style).
        ``"whitened"``: SVD of ``W L`` with ``L L^T = X^T X`` (SVD-LLM).
    reduction, target_params : float or int
        Budget, as :func:`adapters.compress` (default ``reduction=0.1``).
    targets, layers : optional
        As :func:`adapters.compress`.
    ridge : float
        Relative shift of ``X^T X``.
    token_weighting : {"none", "norm", "clip"}
        Token weights of ``X^T X`` (:func:`adapters.calibration.token_weights`); ``"none"`` is
        SVD-LLM's plain covariance.
    progress : bool

    Returns
    -------
    model, report : nn.Module, CompressionReport
        ``report.method`` is ``"svd-<kind>"``; ``rows``/``cols`` are empty.

    Raises
    ------
    ValueError
        Unknown kind or infeasible budget (before the model is touched).

    Notes
    -----
    With ``M = W T`` (``T = I``, ``diag(rms)`` or ``L``), the rank-``r`` factor is
    ``A = M Q_r``, ``B = Q_r^T T^{-1}``, so ``(W - A B) T = M - M_r`` and the error in the
    scaled metric is the SVD tail ``sum_{i>r} sigma_i(M)^2`` used by the allocator.

    References
    ----------
    Yuan et al. (2023), "ASVD", arXiv 2312.05821.  Wang et al. (2024), "SVD-LLM", arXiv 2403.07378.
    """
    t0 = time.perf_counter()
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if reduction is not None and target_params is not None:
        raise ValueError("pass reduction= or target_params=, not both")
    reduction = 0.1 if reduction is None and target_params is None else reduction
    before = count_parameters(model)
    target = int(target_params) if target_params is not None else math.floor((1.0 - reduction) * before)
    found = find_targets(model, targets=targets, layers=layers)
    names = list(found)
    shapes = [tuple(found[nm][1].weight.shape) for nm in names]
    max_saving = sum(m * n - svd_params(m, n, 1) for m, n in shapes)
    if before - target > max_saving or target >= before:
        raise ValueError(
            f"target_params={target:,} is not reachable from {before:,} parameters with these targets "
            f"(at most {max_saving:,} removable); ask for a smaller reduction="
        )
    by_layer: dict[int, dict] = {}
    for nm, (i, mod) in found.items():
        by_layer.setdefault(i, {})[nm] = mod
    decomp = {}
    if kind == "plain":
        for nm, (_, lin) in found.items():
            M = lin.weight.detach().to(torch.float64)
            decomp[nm] = (M, None, *_eig_small(M), None)
    else:
        batches = prepare_calibration(calibration, tokenizer=tokenizer, nsamples=nsamples, seqlen=seqlen,
                                      batch_size=batch_size, seed=seed)
        runner = LayerRunner(model, batches, progress=progress)
        hidden = runner.hidden
        for i in tqdm(range(max(by_layer) + 1), desc=f"svd-{kind}", disable=not progress, leave=False):
            mods = by_layer.get(i, {})
            stats, out = record_layer(runner, i, hidden, mods, weighting=token_weighting)
            for nm, lin in mods.items():
                W64 = lin.weight.detach().to(torch.float64)
                M, T = _factor_source(W64, stats[nm], kind, ridge)
                decomp[nm] = (M, T, *_eig_small(M), stats[nm].gram)
            hidden = out
    errors = []
    for nm, (m, n) in zip(names, shapes):
        vals = decomp[nm][2].cpu().numpy()
        tail = np.concatenate([np.cumsum(vals[::-1])[::-1], [0.0]])
        errors.append(tail[1 : _svd_break_even(m, n) + 1] / max(float(tail[0]), 1e-300))
    ranks, _ = allocate_ranks(shapes, errors, need=before - target, cost=svd_params)
    swaps = []
    reports = []
    try:
        for nm, r in zip(names, ranks):
            if r == 0:
                continue
            t = time.perf_counter()
            lin = found[nm][1]
            M, T, vals, vecs, side, gram = decomp[nm]
            A, B = _factors(M, T, vecs, side, r)
            W64 = lin.weight.detach().to(torch.float64)
            E = W64 - A @ B
            if gram is not None:
                err = math.sqrt(float(torch.sum((E @ gram) * E)) / max(float(torch.sum((W64 @ gram) * W64)), 1e-300))
            else:
                err = float(torch.linalg.norm(E) / torch.linalg.norm(W64))
            new = LowRankLinear(A.to(lin.weight), B.to(lin.weight), bias=lin.bias)
            reports.append(ModuleReport(
                name=nm, layer=found[nm][0], shape=tuple(lin.weight.shape), rank=r, rows=[], cols=[],
                params_before=lin.weight.numel() + (0 if lin.bias is None else lin.bias.numel()),
                params_after=sum(p.numel() for p in new.parameters()), rel_error=err,
                seconds=time.perf_counter() - t,
            ))
            _swap(model, nm, new, swaps)
    except BaseException:
        for parent, attr, old in reversed(swaps):
            setattr(parent, attr, old)
        raise
    report = CompressionReport(
        method=f"svd-{kind}", modules=reports, params_before=before, params_after=count_parameters(model),
        target_params=target, seconds=time.perf_counter() - t0, layers=sorted({r.layer for r in reports}),
        options=dict(nsamples=nsamples, seqlen=seqlen, seed=seed, ridge=ridge, kind=kind,
                     token_weighting=token_weighting),
    )
    return model, report
