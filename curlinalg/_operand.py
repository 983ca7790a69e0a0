"""The :class:`Operand` interface the drivers use, and its dense implementation.

Kinds other than dense arrays subclass it in :mod:`curlinalg.operands` and :mod:`curlinalg._dask`;
:func:`curlinalg.operands.as_operand` chooses.
"""

from __future__ import annotations

from typing import Any

from . import _backend

__all__ = ["DENSIFY_MAX_ENTRIES", "Operand"]

#: Sparse and matrix-free operands are densified (for an exact SVD or certificate) only up to
#: this many entries.
DENSIFY_MAX_ENTRIES = 1 << 20


class Operand:
    """A validated ``(m, n)`` input: its products (:math:`AX` and the adjoint's :math:`A^HY`),
    cuts and dense form.

    Attributes
    ----------
    shape : tuple of int
    dtype : dtype of the dense results
    xp : namespace of the dense results (numpy for sparse and matrix-free input)
    kind : {"dense", "sparse", "operator"}
    like : array
        A small dense array of the result's namespace, device and dtype (for random numbers).
    """

    kind = "dense"

    def __init__(self, A: Any, xp: Any):
        self.A, self.xp = A, xp
        self.shape = (int(A.shape[0]), int(A.shape[1]))
        self.dtype = A.dtype
        self.like = A

    @property
    def densifiable(self) -> bool:
        """Whether :meth:`dense` is cheap enough for an exact SVD."""
        return True

    def matmat(self, X: Any) -> Any:
        return self.A @ X

    def rmatmat(self, Y: Any) -> Any:
        """:math:`A^HY` (the conjugate transpose; :math:`A^TY` for a real ``A``)."""
        return _backend.ctranspose(self.A) @ Y

    def columns(self, J: Any) -> Any:
        return self.xp.take(self.A, J, axis=1)

    def rows(self, I: Any) -> Any:
        return self.xp.take(self.A, I, axis=0)

    def dense_columns(self, J: Any) -> Any:
        return self.columns(J)

    def dense_rows(self, I: Any) -> Any:
        return self.rows(I)

    def cross(self, I: Any, J: Any) -> Any:
        return self.xp.take(self.dense_rows(I), J, axis=1)

    def dense(self) -> Any:
        return self.A
