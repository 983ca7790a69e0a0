"""What the drivers need of a matrix, for each kind of input a user has.

:func:`as_operand` validates its input once, before any work, and wraps it in an
:class:`Operand`: products with dense blocks, selected columns and rows (in the input's own kind:
sparse stays sparse), the intersection of selected rows and columns, and the dense matrix where
the driver may afford it. Kinds:

* dense arrays of any array-API namespace (numpy, torch, cupy), and ``numpy.matrix`` (viewed as an
  array);
* ``scipy.sparse`` matrices and arrays (CSR, CSC, COO, ...): products cost ``O(nnz)`` per column,
  ``C`` and ``R`` are sparse column and row cuts;
* ``scipy.sparse.linalg.LinearOperator`` (matrix-free): columns are :math:`AE_J`, rows
  :math:`(A^HE_I)^H` (its ``rmatmat`` is the adjoint, the conjugate transpose); nothing but
  products is ever asked of it.

Real and complex (complex64, complex128) input alike: the adjoint products are :math:`A^HY`.
"""

from __future__ import annotations

from typing import Any

import array_api_compat as aac
import numpy as np

from . import _backend, _dask, _errors, _validation
from ._operand import DENSIFY_MAX_ENTRIES, Operand

__all__ = ["Operand", "as_operand"]

class _Sparse(Operand):
    kind = "sparse"

    def __init__(self, A: Any):
        import array_api_compat.numpy as npx

        super().__init__(A, npx)
        self._csr, self._csc = A.tocsr(), A.tocsc()
        self.like = np.empty((1, 1), dtype=A.dtype)
        # the adjoint of a complex matrix is conjugated once here; a real one's is a view
        self._adjoint = self._csc.T.conj().tocsr() if _backend.is_complex_dtype(A.dtype) else None

    @property
    def densifiable(self) -> bool:
        return self.shape[0] * self.shape[1] <= DENSIFY_MAX_ENTRIES

    def matmat(self, X: Any) -> Any:
        return np.asarray(self._csr @ X)

    def rmatmat(self, Y: Any) -> Any:
        adjoint = self._csc.T if self._adjoint is None else self._adjoint
        return np.asarray(adjoint @ Y)

    def columns(self, J: Any) -> Any:
        return self._csc[:, np.asarray(J)]

    def rows(self, I: Any) -> Any:
        return self._csr[np.asarray(I), :]

    def dense_columns(self, J: Any) -> Any:
        return self.columns(J).toarray()

    def dense_rows(self, I: Any) -> Any:
        return self.rows(I).toarray()

    def dense(self) -> Any:
        return self._csr.toarray()


class _Operator(Operand):
    kind = "operator"

    def __init__(self, A: Any):
        import array_api_compat.numpy as npx

        super().__init__(A, npx)
        self.like = np.empty((1, 1), dtype=A.dtype)
        self._last: dict[str, tuple[bytes, np.ndarray]] = {}

    @property
    def densifiable(self) -> bool:
        return self.shape[0] * self.shape[1] <= DENSIFY_MAX_ENTRIES

    def _checked(self, out: Any, rows: int, cols: int, what: str) -> np.ndarray:
        out = np.asarray(out, dtype=self.dtype)
        if out.shape != (rows, cols):
            raise ValueError(_errors.OPERATOR_SHAPE.format(what=what, got=out.shape, want=(rows, cols)))
        return out

    def matmat(self, X: Any) -> Any:
        return self._checked(self.A.matmat(X), self.shape[0], X.shape[1], "A @ X")

    def rmatmat(self, Y: Any) -> Any:
        return self._checked(self.A.rmatmat(Y), self.shape[1], Y.shape[1], "A^H @ Y")

    def _unit(self, index: Any, size: int) -> np.ndarray:
        E = np.zeros((size, index.shape[0]), dtype=self.dtype)
        E[np.asarray(index), np.arange(index.shape[0])] = 1.0
        return E

    def columns(self, J: Any) -> Any:
        return self._cut("columns", J, lambda: self.matmat(self._unit(J, self.shape[1])))

    def rows(self, I: Any) -> Any:
        return self._cut(
            "rows", I, lambda: _backend.ctranspose(self.rmatmat(self._unit(I, self.shape[0]))))

    def _cut(self, side: str, index: Any, compute: Any) -> np.ndarray:
        """The last cut of each side is kept: the driver asks for it twice (core and result)."""
        key = np.asarray(index).tobytes()
        if self._last.get(side, (None,))[0] != key:
            self._last[side] = (key, compute())
        return self._last[side][1]

    def dense(self) -> Any:
        return self.matmat(np.eye(self.shape[1], dtype=self.dtype))


def _is_sparse(A: Any) -> bool:
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover - scipy is a dependency
        return False
    return sp.issparse(A)


def _is_operator(A: Any) -> bool:
    try:
        from scipy.sparse.linalg import LinearOperator
    except ImportError:  # pragma: no cover
        return False
    return isinstance(A, LinearOperator)


def as_operand(A: Any, /) -> Operand:
    """Validate ``A`` (before any work) and wrap it; see the module docstring for the kinds.

    Parameters
    ----------
    A : array, numpy.matrix, scipy.sparse matrix, LinearOperator, dask array, or Operand
        An ``Operand`` is returned as it is.

    Returns
    -------
    Operand

    Raises
    ------
    TypeError
        An unsupported kind, or a dtype other than float32, float64, complex64 or complex128.
    ValueError
        Not 2-D (a stack of matrices is a separate call), empty, or holding NaN/Inf.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> op = as_operand(sp.eye(4, 3, format="csr"))
    >>> op.kind, op.shape, op.rows(np.array([1])).nnz
    ('sparse', (4, 3), 1)
    """
    if isinstance(A, Operand):
        return A
    if isinstance(A, np.matrix):
        A = np.asarray(A)
    if _dask.is_dask(A):
        return _dask.as_dask_operand(A)
    if _is_sparse(A):
        _validation.check_shape(A.shape)
        _validation.check_dtype(A.dtype, np)
        data = A.tocoo().data
        if not np.all(np.isfinite(data)):
            raise ValueError(_errors.NOT_FINITE.format(name="matrix"))
        return _Sparse(A)
    if _is_operator(A):
        _validation.check_shape(A.shape)
        _validation.check_dtype(np.dtype(A.dtype), np)
        try:  # scipy gives every LinearOperator an rmatvec, which fails when none was defined
            A.rmatvec(np.zeros(A.shape[0], dtype=A.dtype))
        except (TypeError, NotImplementedError, AttributeError):
            raise TypeError(_errors.OPERATOR_ADJOINT) from None
        return _Operator(A)
    if not aac.is_array_api_obj(A):
        raise TypeError(_errors.NOT_ARRAY.format(kind=type(A).__name__))
    return Operand(A, _validation.check_matrix(A))
