"""What :func:`curlinalg.cur` returns: :class:`CURResult`, and :class:`CURBatch` for a stack."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import array_api_compat as aac

from . import _backend
from .bounds import ROUNDING_FACTOR, Certificate, rounding_term

__all__ = ["CURBatch", "CURResult", "ROUNDING_FACTOR", "rounding_term"]

@dataclass(frozen=True, eq=False, repr=False)
class CURResult:
    r"""A CUR approximation :math:`A \approx C\,U\,R` and the constants that bound its error.

    Attributes
    ----------
    C : array, shape (m, c)
        Columns ``cols`` of ``A``.
    U : array, shape (c, r)
        The core.
    R : array, shape (r, n)
        Rows ``rows`` of ``A``.
    rows, cols : int64 arrays
        Selected indices, in the input's namespace and device.
    rank : int
        Target rank ``k`` of the selection (``c = r = k`` except for the leverage methods, which
        may keep more indices: the distinct sampled ones, or Q-DEIM's added where the leverage
        choice alone was rank deficient).
    method, core : str
        How rows/columns and the core were chosen.
    basis : {"exact", "randomized"}
        Which truncated SVD supplied the bases :math:`U_k, V_k` the selection was made on.
    eta_rows, eta_cols : float
        Selection constants :math:`\eta_p = \|(P^TU_k)^+\|_2` and :math:`\eta_q = \|(Q^TV_k)^+\|_2`
        for the bases used (always finite).
    sigma_next : float
        Upper bound on the basis residuals :math:`\|(I - U_kU_k^T)A\|_2` and
        :math:`\|A(I - V_kV_k^T)\|_2`: :math:`\sigma_{k+1}` when ``basis == "exact"`` (0 when
        ``k = min(m, n)``); the sketch's :math:`\hat\sigma_{k+1}` plus its certified residual
        when randomized.
    rounding : float
        :math:`\rho = c\,\max(m,n)\,u\,\|A\|_2` (``c`` = :data:`curlinalg.cur.ROUNDING_FACTOR`, ``u`` the unit
        roundoff of the dtype): what truncating ``C`` and ``R`` at their numerical rank and
        rounding in the stable evaluation add to :math:`\sigma_{k+1}`.
    failure_probability : float
        Probability that :attr:`bound` fails: 0 for an exact basis, the sketch residual's
        (:data:`curlinalg.sketch.RESIDUAL_FAILURE_PROBABILITY`) for a randomized one.
    factors : tuple of arrays
        ``(left, right)`` with :math:`CUR = \mathrm{left}\cdot\mathrm{right}` in exact arithmetic,
        formed without dividing by small singular values (see
        :func:`curlinalg.cores.optimal_core_factors`); :meth:`to_dense` and ``@`` use them.
    certificate : Certificate or None
        The certified a posteriori bound, when the rank was chosen by a tolerance.
    sketch_residual : float
        ``core="sketch"`` on a randomized basis: the certified bound on
        :math:`\|(I-QQ^T)A\|_2` of the sketch the core projected (0 otherwise), a term of
        :attr:`bound`.
    """

    C: Any
    U: Any
    R: Any
    rows: Any
    cols: Any
    rank: int
    method: str
    core: str
    basis: str
    eta_rows: float
    eta_cols: float
    sigma_next: float
    rounding: float
    failure_probability: float
    factors: tuple[Any, Any]
    certificate: Certificate | None = None
    sketch_residual: float = 0.0

    # Let numpy defer ``X @ result`` to ``__rmatmul__`` instead of treating the result as an array.
    __array_ufunc__ = None

    @property
    def bound(self) -> float | None:
        r"""Bound on :math:`\|A - CUR\|_2` for the computed result, or None for the cross core.

        :math:`(\eta_p + \eta_q)\,(\sigma_{k+1} + \rho)` for ``core="optimal"``: Sorensen & Embree
        (2016, Theorem 4.1) for the exact-arithmetic part, plus the rounding term
        :attr:`rounding`. It holds with certainty for an exact basis and with probability at least
        ``1 - failure_probability`` for a randomized one. ``core="sketch"`` adds
        :attr:`sketch_residual`: with :math:`P_C, P_R` the projectors onto the ranges of ``C``
        and ``R^T``, :math:`A - P_CQQ^TAP_R = (A - P_CAP_R) + P_C(I-QQ^T)AP_R`. The cross core
        has no bound of this kind; :func:`curlinalg.certify` certifies it a posteriori.
        """
        if self.core == "cross":
            return None
        return (self.eta_rows + self.eta_cols) * (self.sigma_next + self.rounding) + self.sketch_residual

    @property
    def shape(self) -> tuple[int, int]:
        return (self.C.shape[0], self.R.shape[1])

    def to_dense(self) -> Any:
        """Form :math:`CUR` as a dense ``(m, n)`` array, from the stable :attr:`factors`."""
        left, right = self.factors
        return left @ right

    def __matmul__(self, X: Any) -> Any:
        """:math:`CUR\\,X` without forming :math:`CUR`."""
        left, right = self.factors
        return left @ (right @ X)

    def __rmatmul__(self, X: Any) -> Any:
        """:math:`X\\,CUR` without forming :math:`CUR`."""
        left, right = self.factors
        return (X @ left) @ right

    def __repr__(self) -> str:
        bound = "None" if self.bound is None else f"{self.bound:.3g}"
        cert = "" if self.certificate is None else f", certified={self.certificate.bound:.3g}"
        return (
            f"CURResult(shape={self.shape}, rank={self.rank}, method={self.method!r}, "
            f"core={self.core!r}, basis={self.basis!r}, bound={bound}{cert})"
        )

    def __eq__(self, other: object) -> bool:
        """Same metadata, and equal indices and factors (element by element)."""
        if not isinstance(other, CURResult):
            return NotImplemented
        meta = ("shape", "rank", "method", "core", "basis")
        if any(getattr(self, f) != getattr(other, f) for f in meta):
            return False
        pairs = zip((self.rows, self.cols, self.C, self.U, self.R),
                    (other.rows, other.cols, other.C, other.U, other.R))
        return all(_same(a, b) for a, b in pairs)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False, repr=False)
class CURBatch:
    """Per-matrix CUR results of a stack ``(b, m, n)``, each with its own guarantees.

    Indexing, ``len`` and iteration give the :class:`CURResult` of each matrix; :meth:`to_dense`
    and ``@`` act on the whole stack.

    Attributes
    ----------
    results : tuple of CURResult
    """

    results: tuple[CURResult, ...]

    __array_ufunc__ = None

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> CURResult:
        return self.results[i]

    def __iter__(self) -> Any:
        return iter(self.results)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.results), *self.results[0].shape)

    @property
    def bounds(self) -> list[float | None]:
        """Each matrix's :attr:`CURResult.bound`."""
        return [r.bound for r in self.results]

    def to_dense(self) -> Any:
        """The ``(b, m, n)`` stack of approximations."""
        dense = [r.to_dense() for r in self.results]
        return aac.array_namespace(*dense).stack(dense)

    def __matmul__(self, X: Any) -> Any:
        """``(b, m, p)``: each approximation times ``X[i]`` (``X`` of shape ``(b, n, p)``), or
        times the same ``X`` of shape ``(n, p)``."""
        parts = [r @ (X[i] if X.ndim == 3 else X) for i, r in enumerate(self.results)]
        return aac.array_namespace(*parts).stack(parts)

    def __repr__(self) -> str:
        first = self.results[0]
        return (
            f"CURBatch(shape={self.shape}, ranks={[r.rank for r in self.results]}, "
            f"method={first.method!r}, core={first.core!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CURBatch):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]


def _same(a: Any, b: Any) -> bool:
    """Element-wise equality of two arrays or two scipy.sparse matrices (False across kinds)."""
    if a.shape != b.shape:
        return False
    if hasattr(a, "nnz") and hasattr(b, "nnz"):
        return (a != b).nnz == 0
    try:
        return bool(_backend.namespace(a, b).all(a == b))
    except TypeError:  # different namespaces, devices or kinds
        return False
