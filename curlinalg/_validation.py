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


def check_dtype(dtype: Any, xp: Any, /) -> None:
    """Check a real float32/float64 dtype (complex gets advice that loses nothing)."""
    if dtype in (xp.float32, xp.float64):
        return
    if dtype in (getattr(xp, "complex64", None), getattr(xp, "complex128", None)):
        raise TypeError(_errors.COMPLEX.format(dtype=dtype))
    raise TypeError(_errors.BAD_DTYPE.format(dtype=dtype))


def check_matrix(A: Any, /, *, name: str = "matrix") -> Any:
    """Check that ``A`` is a finite, non-empty, real floating 2-D array; return its namespace."""
    xp = _backend.namespace(A)
    check_shape(A.shape)
    check_dtype(A.dtype, xp)
    if not all_finite(A, xp):
        raise ValueError(_errors.NOT_FINITE.format(name=name))
    return xp


def all_finite(A: Any, xp: Any, /) -> bool:
    """Whether every entry of ``A`` is finite: one reduction (a NaN or Inf makes the sum
    non-finite), and the elementwise test only when the sum is not finite (it may overflow)."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = _backend.to_float(xp.sum(A))
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
