"""Input checks run before any work, with messages from :mod:`curlinalg._errors`."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from . import _backend, _errors


def check_shape(shape: Any, /) -> None:
    """Check a non-empty 2-D shape."""
    shape = tuple(shape)
    if len(shape) != 2:
        raise ValueError(_errors.NOT_2D.format(shape=shape))
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(_errors.EMPTY.format(shape=shape))


def check_dtype(dtype: Any, xp: Any, /, *, real_only: tuple[str, str] | None = None, name: str = "A") -> None:
    """Check a float32/float64/complex64/complex128 dtype.

    ``real_only=(what, why)`` refuses complex dtypes too, naming the routine or option ``what``
    that is real-only and saying ``why``.
    """
    if dtype in (xp.float32, xp.float64):
        return
    if dtype in (getattr(xp, "complex64", None), getattr(xp, "complex128", None)):
        if real_only is not None:
            what, why = real_only
            raise TypeError(_errors.REAL_ONLY.format(what=what, name=name, dtype=dtype, why=why))
        return
    raise TypeError(_errors.BAD_DTYPE.format(dtype=dtype))


def check_matrix(A: Any, /, *, name: str = "matrix", real_only: tuple[str, str] | None = None) -> Any:
    """Check that ``A`` is a finite, non-empty, floating (real or complex) 2-D array; return its
    namespace. ``real_only`` as in :func:`check_dtype`."""
    xp = _backend.namespace(A)
    check_shape(A.shape)
    check_dtype(A.dtype, xp, real_only=real_only, name=name)
    if not all_finite(A, xp):
        raise ValueError(_errors.NOT_FINITE.format(name=name))
    return xp


def check_same_field(**operands: Any) -> None:
    """Refuse a mix of real and complex operands (``name=array or dtype``; None is skipped),
    before any work, with each operand's dtype named."""
    dtypes = {k: getattr(v, "dtype", v) for k, v in operands.items() if v is not None}
    kinds = {k: _backend.is_complex_dtype(d) for k, d in dtypes.items()}
    if len(set(kinds.values())) > 1:
        names = ", ".join(
            f"{k} is {'complex' if kinds[k] else 'real'} ({dtypes[k]})" for k in dtypes)
        raise TypeError(_errors.MIXED_FIELDS.format(names=names))


def all_finite(A: Any, xp: Any, /) -> bool:
    """Whether every entry of ``A`` is finite: one reduction (a NaN or Inf makes the sum
    non-finite; for complex ``A`` the sum of its real and imaginary parts), and the elementwise
    test only when the sum is not finite (it may overflow)."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = xp.sum(A)
        if _backend.is_complex_dtype(A.dtype):  # a NaN or Inf in either part reaches this sum
            total = xp.real(total) + xp.imag(total)
        total = _backend.to_float(total)
    if math.isfinite(total):
        return True
    return bool(xp.all(xp.isfinite(A)))


def check_basis(V: Any, /) -> Any:
    """Check a tall ``(n, k)`` basis, ``n >= k >= 1``; return its namespace."""
    xp = check_matrix(V, name="basis")
    n, k = V.shape
    if n < k:
        raise ValueError(_errors.TALL.format(shape=tuple(V.shape)))
    return xp


def check_rank(rank: Any, kmax: int, /) -> int:
    """Check ``1 <= rank <= kmax``; return it as an int."""
    if isinstance(rank, (bool, np.bool_)) or not isinstance(rank, numbers.Integral):
        raise TypeError(_errors.RANK_TYPE.format(kind=type(rank).__name__))
    rank = int(rank)
    if not 1 <= rank <= kmax:
        raise ValueError(_errors.RANK_RANGE.format(kmax=kmax, rank=rank))
    return rank


def check_stopping(rank: Any, rtol: Any, atol: Any, kmax: int, /) -> tuple[int | None, float | None, float | None]:
    """Check the stopping rules ``rank`` (optional, ``1 <= rank <= kmax``), ``rtol`` and ``atol``
    (optional tolerances); at least one must be given. Returns them checked."""
    rank = None if rank is None else check_rank(rank, kmax)
    rtol, atol = check_tol(rtol, "rtol"), check_tol(atol, "atol")
    if rank is None and rtol is None and atol is None:
        raise ValueError(_errors.NO_STOP)
    return rank, rtol, atol


def check_tol(value: Any, name: str, /) -> float | None:
    """Check an optional tolerance: ``None`` or a finite float ``>= 0``."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(_errors.TOL_VALUE.format(name=name, value=value))
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(_errors.TOL_VALUE.format(name=name, value=value))
    return v


def check_choice(value: Any, name: str, choices: tuple[str, ...], /) -> str:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(_errors.CHOICE.format(name=name, choices=choices, value=value))
    return value


def check_int(value: Any, name: str, /, *, minimum: int) -> int:
    """Check an integer option ``>= minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(_errors.INT_TYPE.format(name=name, kind=type(value).__name__))
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_rng(rng: Any, like: Any, /) -> None:
    """Check that ``rng`` suits the backend of ``like`` (before any work)."""
    if rng is None or isinstance(rng, np.random.Generator):
        return
    if isinstance(rng, (numbers.Integral, np.integer)) and not isinstance(rng, (bool, np.bool_)):
        _backend.seed_of(rng)  # the sign check
        return
    backend = type(like).__module__.split(".")[0]
    if type(rng).__module__.split(".")[0] == backend and backend in ("torch", "cupy"):
        return
    raise TypeError(_errors.RNG_KIND.format(backend=backend, kind=type(rng).__name__))
