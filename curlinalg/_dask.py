"""dask arrays as CUR input: the path past one machine.

A dask array is never gathered whole (unless it is tiny, see :attr:`_Dask.densifiable`). What
crosses to the client:

* products :math:`AX` and :math:`A^HY` with thin numpy blocks (``l`` columns): dask products over
  the chunks of ``A``, gathered as ``(m, l)`` and ``(n, l)`` numpy arrays; the QRs, the SVD of the
  small sketch and the selection (DEIM, Q-DEIM, maxvol, leverage) then run locally;
* the selected columns and rows, ``(m, k)`` and ``(k, n)``, gathered once each to form the core
  from small products (:math:`Q_C^TA` is one more thin product).

``C`` and ``R`` of the result are lazy dask slices ``A[:, cols]`` and ``A[rows, :]``; the core
``U``, the indices and the stable factors are small numpy arrays. See docs/index.md, "Input kinds,
and what each costs", for the passes over ``A`` of each step.

dask is imported only when a dask array arrives, so curlinalg imports without it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _backend, _errors, _validation
from ._operand import DENSIFY_MAX_ENTRIES, Operand

__all__ = ["is_dask", "as_dask_operand"]


def is_dask(A: Any) -> bool:
    """Whether ``A`` is a ``dask.array.Array`` (without importing dask when it is not loaded).

    Parameters
    ----------
    A : object

    Returns
    -------
    bool
    """
    import sys

    da = sys.modules.get("dask.array")
    return da is not None and isinstance(A, da.Array)


def _check_dask(A: Any) -> None:
    """Shape, dtype and chunk checks that read no data (the graph's metadata only).

    Raises
    ------
    ValueError
        Not 2-D, unknown chunk sizes, or empty.
    TypeError
        A dtype other than float32, float64, complex64 or complex128.
    """
    shape = tuple(A.shape)
    if len(shape) != 2:
        raise ValueError(_errors.NOT_2D.format(shape=shape))
    if any(isinstance(s, float) and math.isnan(s) for s in shape):
        raise ValueError(_errors.DASK_UNKNOWN_CHUNKS.format(shape=shape))
    _validation.check_shape(shape)
    _validation.check_dtype(np.dtype(A.dtype), np)


def as_dask_operand(A: Any, /) -> "_Dask":
    """Validate a dask array before any work and wrap it as an :class:`~curlinalg.operands.Operand`.

    The shape, dtype and chunk checks read only the graph's metadata; the finiteness check is one
    parallel pass over ``A`` (``da.isfinite(A).all()``), a reduction whose only result on the
    client is one boolean.

    Parameters
    ----------
    A : dask.array.Array, shape (m, n)
        float32, float64, complex64 or complex128, with known chunk sizes.

    Returns
    -------
    _Dask

    Raises
    ------
    ValueError
        Not 2-D, empty, unknown chunk sizes (with the advice ``A.compute_chunk_sizes()``), or NaN
        or Inf entries.
    TypeError
        Integer, bool or half-precision dtype (with the advice to cast lazily).
    """
    import dask.array as da

    _check_dask(A)
    if not bool(da.isfinite(A).all().compute()):
        raise ValueError(_errors.DASK_NOT_FINITE)
    return _Dask(A)


class _Dask(Operand):
    """A validated dask array: dask products gathered thin, lazy cuts for ``C`` and ``R``.

    Once :meth:`dense` has gathered ``A`` (a tiny matrix, or ``basis="exact"`` asked for), every
    later product and cut reads that local copy instead of making another pass over the chunks.
    """

    kind = "dask"

    def __init__(self, A: Any):
        import array_api_compat.numpy as npx

        super().__init__(A, npx)
        self.dtype = np.dtype(A.dtype)
        self.like = np.empty((1, 1), dtype=self.dtype)
        self._local: np.ndarray | None = None

    @property
    def densifiable(self) -> bool:
        """Tiny matrices only (at most :data:`curlinalg.operands.DENSIFY_MAX_ENTRIES` entries)."""
        return self.shape[0] * self.shape[1] <= DENSIFY_MAX_ENTRIES

    def _thin(self, X: Any, chunks: tuple[int, ...]) -> Any:
        """``X`` as a dask array chunked to match ``A`` along the contracted dimension."""
        import dask.array as da

        X = np.asarray(X, dtype=self.dtype)
        return da.from_array(X, chunks=(chunks, (X.shape[1],)))

    def matmat(self, X: Any) -> np.ndarray:
        """:math:`AX` for a thin numpy ``X`` of shape ``(n, l)``: one pass, gathered ``(m, l)``."""
        if self._local is not None:
            return self._local @ X
        return np.asarray((self.A @ self._thin(X, self.A.chunks[1])).compute())

    def rmatmat(self, Y: Any) -> np.ndarray:
        """:math:`A^HY` (:math:`A^TY` for real ``A``) for a thin numpy ``Y`` of shape ``(m, l)``:
        one pass, gathered ``(n, l)``."""
        if self._local is not None:
            return _backend.ctranspose(self._local) @ Y
        adjoint = self.A.conj().T if self.dtype.kind == "c" else self.A.T
        return np.asarray((adjoint @ self._thin(Y, self.A.chunks[0])).compute())

    def columns(self, J: Any) -> Any:
        """Lazy dask slice ``A[:, J]`` (stored as the result's ``C``)."""
        return self.A[:, np.asarray(J)]

    def rows(self, I: Any) -> Any:
        """Lazy dask slice ``A[I, :]`` (stored as the result's ``R``)."""
        return self.A[np.asarray(I), :]

    def dense_columns(self, J: Any) -> np.ndarray:
        """``A[:, J]`` gathered as numpy ``(m, k)``: reads the chunks that hold columns ``J``."""
        if self._local is not None:
            return self._local[:, np.asarray(J)]
        return np.asarray(self.columns(J).compute())

    def dense_rows(self, I: Any) -> np.ndarray:
        """``A[I, :]`` gathered as numpy ``(k, n)``: reads the chunks that hold rows ``I``."""
        if self._local is not None:
            return self._local[np.asarray(I), :]
        return np.asarray(self.rows(I).compute())

    def dense(self) -> np.ndarray:
        """``A`` gathered whole on the client (one pass), kept for the later products."""
        if self._local is None:
            self._local = np.asarray(self.A.compute())
        return self._local
