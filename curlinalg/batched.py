r"""Batched CUR of a torch stack ``(b, m, n)``: one kernel call per step for the whole stack.

:func:`curlinalg.cur` sends a torch stack here when every matrix would take the same path
(exact basis, DEIM or Q-DEIM selection, the optimal core, a fixed rank within every matrix's
numerical rank); the other stacks run one :func:`~curlinalg.cur` per matrix. The steps are the
per-matrix algorithm with a batch dimension: a batched SVD (cuSOLVER ``gesvdj``-batched on CUDA),
DEIM from one batched ``lu_factor`` (the ``b x k`` pivots cross to the host once) or Q-DEIM by
batched pivoted Gram-Schmidt (indices stay on the device), gathers for ``C`` and ``R``, batched
QRs and small SVDs for the stable core. The numerical-rank cut of ``C`` and ``R`` differs per
matrix; it is applied as a mask (dropped directions get zero weight) so the stack keeps one
shape, which gives the same product :math:`Q_C(Q_C^TAQ_R)Q_R^T` as the per-matrix cut.
"""

from __future__ import annotations

from typing import Any


from . import _backend
from .bounds import constant_from_smallest
from .results import CURBatch, CURResult, rounding_term

__all__ = ["batched_cur", "supports"]

#: Selections with a batched kernel.
BATCHED_METHODS = ("deim", "qdeim")


def supports(A: Any, /, *, rank: int | None, rtol: Any, atol: Any, method: str, core: str,
             basis: str, oversample: int) -> bool:
    """Whether the stack ``A`` takes the batched path (see the module docstring)."""
    import array_api_compat as aac

    if not aac.is_torch_array(A) or rank is None or rtol is not None or atol is not None:
        return False
    if method not in BATCHED_METHODS or core not in ("optimal", "sketch") or basis == "randomized":
        return False
    if method == "deim" and A.is_complex():  # batched getrf pivots on |Re| + |Im|, not |z|
        return False
    p = min(A.shape[-2:])
    return basis == "exact" or p <= 512 or 4 * min(rank + oversample, p) > p


def _qdeim_rows(U: Any) -> Any:
    """Q-DEIM rows by pivoted Gram-Schmidt on the rows of each basis, batched on the device
    (residual row norms recomputed each step, as in the per-matrix device path)."""
    import torch

    b, n, k = U.shape
    work = U.clone()
    alive = torch.ones((b, n), dtype=_backend.real_dtype(U.dtype, torch), device=U.device)
    chosen = []
    for _ in range(k):
        p = torch.argmax(_backend.abs2(work).sum(-1) * alive, dim=-1)  # (b,)
        chosen.append(p)
        q = torch.take_along_dim(work, p[:, None, None], dim=1)[:, 0, :]  # (b, k)
        q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
        work = work - (work @ q.conj()[:, :, None]) * q[:, None, :]
        alive = alive.scatter(1, p[:, None], 0.0)
    return torch.stack(chosen, dim=1)


def _masked_range(X: Any, rtol: float) -> tuple[Any, Any]:
    """``X = Q diag(s) V^T`` per matrix with the directions below ``rtol * s_max`` given zero
    weight: ``(Q * mask, V / s * mask)``."""
    import torch

    Q, T = torch.linalg.qr(X)
    Ut, s, Vt = torch.linalg.svd(T)
    keep = s > rtol * s[:, :1]
    inv = torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))
    return (Q @ Ut) * keep[:, None, :], Vt.mH * inv[:, None, :]


def batched_cur(A: Any, /, *, rank: int, method: str, core: str) -> CURBatch | None:
    """CUR of every matrix of the torch stack ``A`` at ``rank`` in batched kernels.

    The caller checked :func:`supports`, the input (finite, real floating, non-empty) and the
    rank; a matrix whose numerical rank is below ``rank`` sends the whole stack back to the
    per-matrix loop (``None`` is returned), which warns and lowers the rank as :func:`cur` does.
    """
    import torch

    b, m, n = A.shape
    k = rank
    eps = float(torch.finfo(A.dtype).eps)
    rounding_eps = _backend.rounding_eps(A.dtype, torch)
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    numerical = (s > s[:, :1] * max(m, n) * eps).sum(-1)
    if int(numerical.min()) < k:
        return None
    Uk, Vk = U[..., :k], Vh[..., :k, :].mH
    select = _backend._lu_row_order_torch if method == "deim" else _qdeim_rows
    rows, cols = select(Uk), select(Vk)
    C = torch.take_along_dim(A, cols[:, None, :], dim=2)
    R = torch.take_along_dim(A, rows[:, :, None], dim=1)
    rtol = max(m, n) * eps
    Qc, Wc = _masked_range(C, rtol)
    Qr, Wr = _masked_range(R.mH, rtol)
    M = Qc.mH @ A @ Qr
    core_U = Wc @ M @ Wr.mH
    right = M @ Qr.mH
    eta = []
    for basis, idx in ((Uk, rows), (Vk, cols)):
        sv = torch.linalg.svdvals(torch.take_along_dim(basis, idx[:, :, None], dim=1))
        eta.append([constant_from_smallest(float(v), basis.shape[-2:], eps) for v in sv[:, -1].cpu().numpy()])
    top = s[:, 0].cpu().numpy()
    tail = (s[:, k] if k < s.shape[-1] else torch.zeros_like(s[:, 0])).cpu().numpy()
    results = tuple(
        CURResult(
            C[i], core_U[i], R[i], rows[i], cols[i], k, method, core, "exact",
            eta[0][i], eta[1][i], float(tail[i]), rounding_term((m, n), rounding_eps, float(top[i])), 0.0,
            (Qc[i], right[i]),
        )
        for i in range(b)
    )
    return CURBatch(results)
