"""Backend glue: the namespace of the input, and the few operations the array API lacks.

Everything else in the package is written against the array API standard through
``array_api_compat``; this module is the one place that knows about numpy, torch and cupy.
It provides, each with a per-backend fast path and a pure-array-API fallback:

* :func:`lu_row_order` -- the row order of LU with partial pivoting (the DEIM order),
* :func:`pivoted_rows` -- the row order of column-pivoted QR of ``V.T`` (the Q-DEIM order),
* :class:`Random` -- Gaussian and uniform numbers on the input's device from an explicit seed,
* :func:`lu_normalize` -- the permuted unit-lower factor of LU, a cheap basis of a range.

Host arrays (numpy, torch on CPU) are handed to LAPACK through zero-copy numpy views. Device
arrays never leave the device, except for the ``k`` LU pivot integers (one transfer, not one per
index) on torch.
"""

from __future__ import annotations

from typing import Any

import array_api_compat as aac
import numpy as np
import scipy.linalg as sla

from . import _errors

__all__ = [
    "namespace", "is_host", "lu_row_order", "pivoted_rows", "Random", "to_float", "count_above",
    "lu_normalize", "is_complex_dtype", "ctranspose", "abs2", "real_dtype", "rounding_eps",
]


def namespace(*arrays: Any) -> Any:
    """Return the array-API namespace shared by ``arrays``; raise if they disagree.

    Raises
    ------
    TypeError
        If an argument is not an array, or the arrays mix namespaces or devices.
    """
    for a in arrays:
        if not aac.is_array_api_obj(a):
            raise TypeError(_errors.NOT_ARRAY.format(kind=type(a).__name__))
    try:
        xp = aac.array_namespace(*arrays)
    except TypeError as exc:
        kinds = sorted({type(a).__module__ + "." + type(a).__name__ for a in arrays})
        raise TypeError(_errors.MIXED.format(a=kinds[0], b=kinds[-1])) from exc
    devices = [aac.device(a) for a in arrays]
    for d in devices[1:]:
        if d != devices[0]:
            raise TypeError(_errors.MIXED.format(a=devices[0], b=d))
    return xp


def is_host(x: Any) -> bool:
    """Whether ``x`` lives in host memory where numpy can view it without a copy."""
    if aac.is_numpy_array(x):
        return True
    return aac.is_torch_array(x) and x.device.type == "cpu"


def _host_view(x: Any) -> np.ndarray:
    if aac.is_torch_array(x):
        return x.detach().resolve_conj().numpy()
    return np.asarray(x)


def _from_host(a: np.ndarray, like: Any) -> Any:
    if aac.is_torch_array(like):
        import torch

        return torch.from_numpy(np.ascontiguousarray(a))
    return a


def is_complex_dtype(dtype: Any) -> bool:
    """Whether ``dtype`` (numpy, torch or cupy) is complex."""
    flag = getattr(dtype, "is_complex", None)  # torch.dtype
    if isinstance(flag, bool):
        return flag
    try:
        return np.dtype(dtype).kind == "c"
    except TypeError:
        return False


def ctranspose(x: Any) -> Any:
    """The conjugate transpose :math:`x^H` of a matrix (or of each matrix of a stack); ``x.T``
    itself for a real matrix, so that real paths are unchanged."""
    if not is_complex_dtype(x.dtype):
        return x.T if x.ndim == 2 else aac.array_namespace(x).matrix_transpose(x)
    if aac.is_torch_array(x):
        return x.mH
    xp = aac.array_namespace(x)
    return xp.conj(x).T if x.ndim == 2 else xp.matrix_transpose(xp.conj(x))


def conj(x: Any) -> Any:
    r""":math:`\bar x`; ``x`` itself when it is real."""
    return aac.array_namespace(x).conj(x) if is_complex_dtype(x.dtype) else x


def abs2(x: Any) -> Any:
    """:math:`|x|^2` elementwise, in the real dtype (``x * x`` for a real ``x``)."""
    if not is_complex_dtype(x.dtype):
        return x * x
    xp = aac.array_namespace(x)
    re, im = xp.real(x), xp.imag(x)
    return re * re + im * im


def real_dtype(dtype: Any, xp: Any) -> Any:
    """float32 for complex64, float64 for complex128; a real dtype itself."""
    if not is_complex_dtype(dtype):
        return dtype
    return xp.float32 if dtype == xp.complex64 else xp.float64


#: The rounding terms of complex input use the unit roundoff of its real counterpart times this:
#: a complex product is accurate to :math:`\sqrt2\gamma_2` (Higham 2002, Lemma 3.5), where a
#: real one is to :math:`u`.
COMPLEX_ROUNDING_FACTOR = 2.0**0.5


def rounding_eps(dtype: Any, xp: Any) -> float:
    """Machine epsilon for the rounding terms of the bounds: ``finfo(dtype).eps`` for real
    dtypes, :data:`COMPLEX_ROUNDING_FACTOR` times that of the real counterpart for complex."""
    eps = float(xp.finfo(dtype).eps)
    return COMPLEX_ROUNDING_FACTOR * eps if is_complex_dtype(dtype) else eps


def to_float(x: Any) -> float:
    """A 0-d array as a Python float (a device sync where the array lives on a device; a torch
    tensor that carries a graph is read without it)."""
    return float(x.detach()) if hasattr(x, "detach") else float(x)


def count_above(s: Any, threshold: float, /) -> int:
    """How many entries of the array ``s`` exceed ``threshold`` (one host sync)."""
    xp = aac.array_namespace(s)
    return int(to_float(xp.sum(xp.astype(s > threshold, xp.int64))))


def _first_k_of_swaps(piv: np.ndarray, k: int) -> np.ndarray:
    """First ``k`` entries of the permutation encoded by LAPACK-style row interchanges."""
    perm: dict[int, int] = {}
    for i in range(k):
        j = int(piv[i])
        pi, pj = perm.get(i, i), perm.get(j, j)
        perm[i], perm[j] = pj, pi
    return np.fromiter((perm.get(i, i) for i in range(k)), dtype=np.int64, count=k)


def lu_row_order(V: Any, /) -> Any:
    r"""Rows chosen, in order, by LU with partial pivoting of the ``(n, k)`` array ``V``.

    This is the DEIM selection (Sorensen & Embree 2016, Sec. 2): step ``j`` picks the row where the
    residual of column ``j``, after interpolating it on the rows chosen so far, is largest in
    magnitude; that residual is column ``j`` of the Schur complement in Gaussian elimination.
    Complex ``V`` takes the array-API elimination, which pivots on the modulus (complex
    ``getrf`` pivots on :math:`|\mathrm{Re}| + |\mathrm{Im}|`).
    """
    k = V.shape[1]
    if is_complex_dtype(V.dtype):
        # LAPACK's zgetrf (and cuSOLVER's) pivots on |Re| + |Im|; DEIM's rule, on which its
        # bound rests (|L_ij| <= 1), is the modulus
        return _lu_row_order_xp(V)
    if is_host(V):
        a = _host_view(V)
        (getrf,) = sla.get_lapack_funcs(("getrf",), (a,))
        _, piv, _ = getrf(a, overwrite_a=False)
        return _from_host(_first_k_of_swaps(piv, k), V)
    if aac.is_torch_array(V):
        return _lu_row_order_torch(V)
    return _lu_row_order_xp(V)


def _lu_row_order_torch(V: Any) -> Any:
    """DEIM order from one ``torch.linalg.lu_factor`` (cuSOLVER ``getrf`` on CUDA).

    The ``k`` pivots cross to the host once, as a block, to be turned into a permutation. A
    stack ``(b, n, k)`` gives the ``(b, k)`` orders from one batched factorisation.
    """
    import torch

    _, piv = torch.linalg.lu_factor(V)
    k = V.shape[-1]
    swaps = (piv - 1).cpu().numpy()
    order = np.stack([_first_k_of_swaps(p, k) for p in swaps]) if swaps.ndim == 2 else (
        _first_k_of_swaps(swaps, k))
    return torch.as_tensor(order, device=V.device)


def _lu_row_order_xp(V: Any) -> Any:
    """Pure array-API DEIM: column-oriented Gaussian elimination, no host round trip."""
    xp = aac.array_namespace(V)
    n, k = V.shape
    work = xp.asarray(V, copy=True)
    alive = xp.ones((n,), dtype=real_dtype(V.dtype, xp), device=aac.device(V))
    rows_idx = xp.arange(n, device=aac.device(V))
    chosen = []
    for j in range(k):
        col = work[:, j]
        p = xp.argmax(xp.abs(col) * alive)
        chosen.append(p)
        pivot_row = xp.take(work, xp.reshape(p, (1,)), axis=0)[0, :]
        if j + 1 < k:
            scale = col / pivot_row[j]
            work[:, j + 1 :] = work[:, j + 1 :] - scale[:, None] * pivot_row[None, j + 1 :]
        alive = xp.where(rows_idx == p, xp.zeros_like(alive), alive)
    return xp.astype(xp.stack(chosen), xp.int64)


def lu_normalize(Y: Any, /) -> Any:
    r""":math:`PL` of :math:`Y = PLU` (LU with partial pivoting): the same range as the tall ``Y``.

    A normaliser for the intermediate steps of subspace iteration: it keeps the columns from
    collapsing onto the dominant direction at about half the cost of a Householder QR, with
    entries of ``L`` at most 1 in magnitude (Li et al. 2017, Sec. 3.3, as in fbpca and
    scikit-learn's ``power_iteration_normalizer="LU"``). Host arrays use LAPACK ``getrf``
    through scipy, torch ``torch.linalg.lu`` (cuSOLVER on CUDA); other namespaces fall back
    to QR.

    References
    ----------
    .. [1] H. Li, G. C. Linderman, A. Szlam, K. P. Stanton, Y. Kluger and M. Tygert,
       "Algorithm 971: an implementation of a randomized algorithm for principal component
       analysis", ACM Trans. Math. Softw. 43(3), 2017.
    """
    if is_host(Y):
        return _from_host(sla.lu(_host_view(Y), permute_l=True, check_finite=False)[0], Y)
    if aac.is_torch_array(Y):
        return _lu_normalize_torch(Y)
    xp = aac.array_namespace(Y)
    return xp.linalg.qr(Y)[0]


def _lu_normalize_torch(Y: Any) -> Any:
    """:func:`lu_normalize` on a torch device: ``lu_factor``, the swaps turned into a row order
    on the host (``l`` integers, one transfer), then one scatter of ``L``'s rows."""
    import torch

    LU, piv = torch.linalg.lu_factor(Y)
    L = torch.tril(LU, diagonal=-1)[:, : Y.shape[1]]
    L.diagonal().fill_(1)
    order = np.arange(Y.shape[0])
    for i, j in enumerate((piv - 1).cpu().numpy()):  # the swaps, applied to the row order
        order[i], order[j] = order[j], order[i]
    out = torch.empty_like(L)
    out[torch.as_tensor(order, device=Y.device)] = L
    return out


def pivoted_rows(V: Any, /, k: int | None = None) -> Any:
    """First ``k`` rows chosen by column-pivoted QR of ``V.T`` (Businger-Golub pivoting).

    This is the Q-DEIM selection (Drmac & Gugercin 2016): step ``j`` picks the row of ``V`` whose
    component orthogonal to the rows already chosen is longest. For complex ``V`` the pivots of
    ``V.T`` and of :math:`V^H` are the same (the column norms agree at every step).
    """
    n, kk = V.shape
    k = min(n, kk) if k is None else k
    if is_host(V):
        a = _host_view(V)
        _, perm = sla.qr(a.T, mode="r", pivoting=True, check_finite=False)
        return _from_host(np.asarray(perm[:k], dtype=np.int64), V)
    return _pivoted_rows_xp(V, k)


def _pivoted_rows_xp(V: Any, k: int) -> Any:
    """Pure array-API pivoted Gram-Schmidt on the rows of ``V``; indices stay on the device.

    Residual row norms are recomputed each step rather than downdated, which costs one extra
    ``O(nk)`` pass and avoids the cancellation that plagues norm downdating.
    """
    xp = aac.array_namespace(V)
    n = V.shape[0]
    work = xp.asarray(V, copy=True)
    rows_idx = xp.arange(n, device=aac.device(V))
    alive = xp.ones((n,), dtype=real_dtype(V.dtype, xp), device=aac.device(V))
    chosen = []
    for _ in range(k):
        norms = xp.sum(abs2(work), axis=1) * alive
        p = xp.argmax(norms)
        chosen.append(p)
        q = xp.take(work, xp.reshape(p, (1,)), axis=0)[0, :]
        q = q / xp.sqrt(xp.sum(abs2(q)))
        work = work - (work @ conj(q))[:, None] * q[None, :]
        alive = xp.where(rows_idx == p, xp.zeros_like(alive), alive)
    return xp.astype(xp.stack(chosen), xp.int64)


def streams(rng: Any, count: int) -> list[Any]:
    """Independent seeds for the random steps of one call (a native generator is shared)."""
    if type(rng).__module__.split(".")[0] in ("torch", "cupy"):
        return [rng] * count
    gen = np.random.default_rng(seed_of(rng))
    return [int(s) for s in gen.integers(0, 2**62, size=count)]


def seed_of(rng: Any) -> int:
    """An int seed from ``None`` (fresh entropy), an int, or a numpy Generator (one draw)."""
    if rng is None:
        return int(np.random.default_rng().integers(2**62))
    if isinstance(rng, (bool, np.bool_)):
        raise TypeError(f"rng must be None, an int seed or a Generator, got {rng!r}")
    if isinstance(rng, (int, np.integer)):
        if rng < 0:
            raise ValueError(f"rng seed must be >= 0, got {rng}")
        return int(rng)
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(2**62))
    raise TypeError(
        "rng must be None, an int seed, a numpy Generator, or a torch/cupy Generator "
        f"matching the input's backend; got {type(rng).__name__}"
    )


class Random:
    """Random numbers in the namespace and on the device of ``like``, from an explicit seed.

    Parameters
    ----------
    rng : None, int, numpy.random.Generator, torch.Generator or cupy Generator
        ``None`` draws fresh entropy; an int or a numpy Generator seeds a backend-native
        generator, so results are reproducible from the seed on every backend; a native
        generator of the input's backend is used as is.
    like : array
        Decides namespace, device and (floating) dtype of the numbers drawn.
    """

    def __init__(self, rng: Any, like: Any):
        self.xp = aac.array_namespace(like)
        self.device = aac.device(like)
        self.dtype = like.dtype
        self._torch = None
        if aac.is_torch_array(like):
            import torch

            if isinstance(rng, torch.Generator):
                self._torch = rng
            else:
                self._torch = torch.Generator(device=like.device).manual_seed(seed_of(rng))
        elif aac.is_cupy_array(like):
            import cupy

            self._cupy = rng if isinstance(rng, cupy.random.Generator) else (
                cupy.random.default_rng(seed_of(rng))
            )
        else:
            self._np = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(
                seed_of(rng)
            )
        self._is_cupy = aac.is_cupy_array(like)

    def normal(self, shape: tuple[int, ...]) -> Any:
        r"""Standard normal numbers of the given shape; for a complex dtype, standard complex
        normal ones (:math:`(g + ih)/\sqrt2`, real and imaginary parts independent with variance
        1/2 each, so :math:`\mathbb{E}|z|^2 = 1`)."""
        if self._torch is not None:
            import torch

            # torch draws complex dtypes as standard complex normal already
            return torch.randn(shape, generator=self._torch, dtype=self.dtype, device=self.device)
        if self._is_cupy:
            if is_complex_dtype(self.dtype):
                part = real_dtype(self.dtype, self.xp)
                re = self._cupy.standard_normal(shape, dtype=part)
                im = self._cupy.standard_normal(shape, dtype=part)
                return (re + 1j * im).astype(self.dtype) * (0.5**0.5)
            return self._cupy.standard_normal(shape, dtype=self.dtype)
        dtype = np.dtype(str(self.dtype).split(".")[-1])
        if dtype.kind == "c":
            g = self._np.standard_normal((2, *shape)) * (0.5**0.5)
            a = (g[0] + 1j * g[1]).astype(dtype)
        else:
            a = self._np.standard_normal(shape).astype(dtype)
        return self.xp.asarray(a, device=self.device)

    def uniform(self, shape: tuple[int, ...]) -> Any:
        """Uniform numbers in ``[0, 1)``, in float64 (sampling thresholds need the precision)."""
        if self._torch is not None:
            import torch

            return torch.rand(shape, generator=self._torch, dtype=torch.float64, device=self.device)
        if self._is_cupy:
            return self._cupy.random(shape, dtype="float64")
        return self.xp.asarray(self._np.random(shape), device=self.device)


def machine_eps(dtype: Any, xp: Any) -> float:
    """Unit roundoff of a floating dtype."""
    return float(xp.finfo(dtype).eps)
