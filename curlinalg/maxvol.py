"""Maximum-volume row selection: square (maxvol) and rectangular (rect_maxvol)."""

from __future__ import annotations

import warnings
from typing import Any

import array_api_compat as aac
import numpy as np

from . import _backend, _errors, _numba, _validation

__all__ = ["maxvol", "rect_maxvol"]

#: Below this many coefficients (``n * k``) the numba swap loop is not worth its one-off
#: compilation; above it, host numpy inputs use it (same results as the array-API loop).
_NUMBA_MIN_ENTRIES = 1 << 16


def _check_tol(tol: Any, minimum: float, name: str = "tol") -> float:
    t = _validation.check_tol(tol, name)
    if t is None or t < minimum:
        raise ValueError(f"{name} must be a float >= {minimum}, got {tol!r}")
    return t


def _coefficients(A: Any, rows: Any, xp: Any) -> Any:
    """``B = A @ inv(A[rows])`` through one ``(k, k)`` solve."""
    S = xp.take(A, rows, axis=0)
    return xp.linalg.solve(S.T, A.T).T


def maxvol(A: Any, /, *, tol: float = 1.05, max_iters: int = 100) -> tuple[Any, Any]:
    r"""Rows of a tall matrix spanning a (locally) maximum-volume square submatrix.

    Parameters
    ----------
    A : array, shape (n, k)
        Tall full column rank matrix, ``n >= k``, real or complex; numpy, torch or cupy on any
        device.
    tol : float, default 1.05
        Stop when every coefficient satisfies :math:`|B_{ij}| \le` ``tol`` (the modulus, for
        complex ``A``); must be ``>= 1``.
    max_iters : int, default 100
        Maximum number of row swaps.

    Returns
    -------
    rows : int64 array, shape (k,)
        Selected rows, in ``A``'s namespace and device.
    B : array, shape (n, k)
        Coefficients :math:`B = A\,A[\mathrm{rows}]^{-1}`, so ``B[rows]`` is the identity. When
        the iteration converges, ``max |B| <= tol``.

    Raises
    ------
    ValueError
        Bad shape or values, ``tol < 1`` or ``max_iters < 0``; or ``A`` is rank deficient
        (no nonsingular start exists).
    TypeError
        Non-floating input.

    Warns
    -----
    ConvergenceWarning
        ``max_iters`` swaps were made and ``max |B| > tol`` still (the rows are valid, the
        bound below holds with ``max |B|`` in place of ``tol``).

    Notes
    -----
    Starts from the LU partial-pivoting rows (DEIM) and swaps row ``i`` into slot ``j`` while
    :math:`|B_{ij}| > \mathrm{tol}`; each swap multiplies :math:`|\det A[\mathrm{rows}]|` by
    :math:`|B_{ij}|` and costs the rank-one update

    .. math:: B \leftarrow B - \frac{B_{:,j}\,(B_{i,:} - e_j^T)}{B_{ij}}.

    At convergence, for orthonormal ``A`` the selection constant obeys
    :math:`\|(P^TA)^{-1}\|_2 = \|B\|_2 \le \|B\|_F \le \sqrt{k + \mathrm{tol}^2\,k(n-k)}`
    (Goreinov, Oseledets, Savostyanov et al. 2010), for complex ``A`` as well.

    The start and the swap rule are teneva's and maxvolpy's, so ``teneva.maxvol(A, e, k)`` and
    ``maxvolpy.maxvol.maxvol(A, tol, max_iters)`` select the same rows as
    ``maxvol(A, tol=e, max_iters=k)`` (their ``tol < 1`` is read as 1, here it is an error;
    maxvolpy's ``top_k_index``, pivots among the first rows only, is ``maxvol(A[:top])`` with
    the other rows' coefficients formed as ``A @ inv(A[rows])``). For complex ``A`` the start
    may differ from theirs: their LU (``zgetrf``) pivots on :math:`|\mathrm{Re}| +
    |\mathrm{Im}|`, this one on the modulus (see :func:`curlinalg.deim`).

    References
    ----------
    .. [1] S. A. Goreinov, I. V. Oseledets, D. V. Savostyanov, E. E. Tyrtyshnikov and
       N. L. Zamarashkin, "How to find a good submatrix", in Matrix Methods: Theory, Algorithms
       and Applications, World Scientific, 2010.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg import maxvol
    >>> A = np.random.default_rng(0).standard_normal((50, 4))
    >>> rows, B = maxvol(A)
    >>> bool(np.abs(B).max() <= 1.05)
    True
    """
    xp = _validation.check_basis(A)
    tol = _check_tol(tol, 1.0)
    max_iters = _validation.check_int(max_iters, "max_iters", minimum=0)
    n, k = A.shape
    rows = _backend.lu_row_order(A)
    S = xp.take(A, rows, axis=0)
    smin = _backend.to_float(xp.linalg.svdvals(S)[-1])
    if not smin > xp.finfo(A.dtype).eps * max(n, k) * _backend.to_float(xp.max(xp.abs(A))):
        raise ValueError(
            "maxvol needs a full column rank matrix, but the best pivoted square submatrix is "
            "singular; drop dependent columns (e.g. orthonormalize and truncate) first"
        )
    B = _coefficients(A, rows, xp)
    if aac.is_numpy_array(B) and n * k >= _NUMBA_MIN_ENTRIES and _numba.available():
        rows, B = _numba.maxvol_swaps(np.ascontiguousarray(B), rows, tol, max_iters)
    elif _backend.is_host(B):
        rows, B = _swap_loop_xp(B, rows, tol, max_iters, xp)
    else:
        rows, B = _swap_loop_device(B, rows, tol, max_iters, xp)
    top = _backend.to_float(xp.max(xp.abs(B)))
    if top > tol:
        warnings.warn(
            _errors.MAXVOL_NOT_CONVERGED.format(iters=max_iters, top=top, tol=tol),
            _errors.ConvergenceWarning,
            stacklevel=2,
        )
    return rows, B


def _swap_loop_xp(B: Any, rows: Any, tol: float, max_iters: int, xp: Any) -> tuple[Any, Any]:
    """The swap loop in the array API (any backend, any device)."""
    k = B.shape[1]
    eye_k = xp.eye(k, dtype=B.dtype, device=aac.device(B))
    scalar = complex if _backend.is_complex_dtype(B.dtype) else _backend.to_float
    for _ in range(max_iters):
        flat = xp.argmax(xp.reshape(xp.abs(B), (-1,)))
        i, j = divmod(int(flat), k)
        bij = scalar(B[i, j])
        if abs(bij) <= tol:
            break
        rows[j] = i
        update = B[i, :] - eye_k[j, :]
        B = B - B[:, j : j + 1] * (update[None, :] / bij)
    return rows, B


#: Swaps run on a device between two host checks of convergence.
_DEVICE_CHECK_EVERY = 16


def _swap_loop_device(
    B: Any, rows: Any, tol: float, max_iters: int, xp: Any
) -> tuple[Any, Any]:
    """The swap loop with the pivot kept on the device: one host sync per 16 swaps.

    A swap whose pivot is already within ``tol`` becomes a no-op (its update is scaled by zero
    and the row index is left alone), so running a few swaps past convergence changes nothing
    and the result equals the array-API loop's.
    """
    n, k = B.shape
    device = aac.device(B)
    cols_k = xp.arange(k, device=device)
    zero = xp.zeros((), dtype=B.dtype, device=device)
    one = xp.ones((), dtype=B.dtype, device=device)
    done = 0
    while done < max_iters:
        for _ in range(min(_DEVICE_CHECK_EVERY, max_iters - done)):
            flat = xp.argmax(xp.reshape(xp.abs(B), (-1,)))
            i, j = flat // k, flat % k
            bij = xp.take(xp.reshape(B, (-1,)), xp.reshape(flat, (1,)))[0]
            active = xp.abs(bij) > tol
            scale = xp.where(active, one / xp.where(active, bij, one), zero)
            row_i = xp.take(B, xp.reshape(i, (1,)), axis=0)[0, :]
            col_j = xp.take(B, xp.reshape(j, (1,)), axis=1)[:, 0]
            e_j = xp.astype(cols_k == j, B.dtype)
            B = B - col_j[:, None] * ((row_i - e_j) * scale)[None, :]
            rows = xp.where((cols_k == j) & active, xp.astype(i, rows.dtype), rows)
        done += _DEVICE_CHECK_EVERY
        if not bool(active):
            break
    return rows, B


def rect_maxvol(
    A: Any,
    /,
    *,
    tol: float = 1.0,
    max_rank: int | None = None,
    min_rank: int | None = None,
    maxvol_tol: float = 1.05,
    maxvol_iters: int = 100,
    identity: bool = False,
) -> tuple[Any, Any]:
    r"""Rows of a tall matrix whose rectangular submatrix has (locally) maximal 2-volume.

    Parameters
    ----------
    A : array, shape (n, k)
        Tall full column rank matrix, real or complex.
    tol : float, default 1.0
        Stop adding rows once every row of the coefficients outside ``rows`` has norm
        :math:`\le` ``tol``. Must be ``> 0``.
    max_rank : int, optional
        Maximum number of rows to return (``k <= max_rank <= n``); default ``n``.
    min_rank : int, optional
        Minimum number of rows to return (``k <= min_rank <= max_rank``): rows are added
        greedily up to it even where every coefficient row already meets ``tol``; default ``k``.
    maxvol_tol : float, default 1.05
        ``tol`` of the square :func:`maxvol` that seeds the selection.
    maxvol_iters : int, default 100
        ``max_iters`` of that square :func:`maxvol`: the number of swaps its start may make.
        The default lets the start converge on most inputs, as :func:`maxvol` does alone;
        teneva and maxvolpy stop it at 10 (set ``maxvol_iters=10`` to select as they do).
    identity : bool, default False
        Return the coefficients with :math:`B[\mathrm{rows}] = I_r` (teneva's and maxvolpy's
        form: each kept row is its own interpolant) instead of
        :math:`B = A\,A[\mathrm{rows}]^+`. Both satisfy :math:`A = B\,A[\mathrm{rows}]`
        (every row of ``A`` lies in the row space of ``A[rows]``). The default is the
        least-squares form because its norm is the selection constant,
        :math:`\|B\|_2 = \|A[\mathrm{rows}]^+\|_2` for orthonormal ``A``, which the bounds
        below and in :func:`curlinalg.selection_constant` use; with ``identity=True``
        :math:`B` is an interpolation matrix, whose kept rows reproduce ``M[rows]`` exactly
        when it is applied to another matrix ``M`` with the same rows.

    Returns
    -------
    rows : int64 array, shape (r,)
        ``min_rank <= r <= max_rank`` selected rows, in the order they were chosen.
    B : array, shape (n, r)
        Coefficients :math:`B = A\,A[\mathrm{rows}]^+` (with ``identity``, the same but
        :math:`B[\mathrm{rows}] = I_r`). Every row outside ``rows`` has
        :math:`\|B_{i,:}\|_2 \le` ``tol`` unless ``max_rank`` rows were reached first (then a
        ``ConvergenceWarning`` says so); the selected rows are rows of the orthogonal projector
        :math:`A[\mathrm{rows}]A[\mathrm{rows}]^+` (norm at most 1; exactly 1 with
        ``identity``), so :math:`\max_i\|B_{i,:}\|_2 \le \max(\mathrm{tol}, 1)`.

    Raises
    ------
    ValueError
        Bad shape, values, ``tol <= 0``, ``max_rank`` or ``min_rank`` out of range.
    TypeError
        Non-floating input; ``identity`` not a bool.

    Notes
    -----
    Seeds with :func:`maxvol`, then greedily appends the row of largest coefficient norm.
    Adding row ``i`` with coefficients :math:`c = B_{i,:}` updates, with :math:`v = Bc^H` and
    :math:`\ell = 1/(1 + c c^H)` (:math:`c^H = c^T` for real ``A``),

    .. math:: B \leftarrow [\,B - \ell\, v c,\; \ell\, v\,],\qquad
              \|B_{p,:}\|^2 \leftarrow \|B_{p,:}\|^2 - \ell\,|v_p|^2 .

    A row norm bound gives :math:`\|(P^TA)^+\|_2 = \|B\|_2 \le \sqrt{k + \mathrm{tol}^2(n - r)}`
    for orthonormal ``A``, better than square maxvol for the same ``k``.

    **The same selection as teneva and maxvolpy.** The algorithm is theirs (Mikhalev &
    Oseledets 2018: an LU-pivoted start, maxvol swaps of the largest coefficient, then greedy
    rows of largest norm), so with matching options the rows are identical:

    * ``teneva.maxvol_rect(A, e, dr_min, dr_max, e0=1.05, k0=10)`` is
      ``rect_maxvol(A, tol=e, min_rank=k + dr_min, max_rank=k + dr_max, maxvol_tol=e0,
      maxvol_iters=k0, identity=True)`` (``max_rank=None`` for ``dr_max=None``);
    * ``maxvolpy.maxvol.rect_maxvol(A, tol, maxK, min_add_K, minK, start_maxvol_iters=10,
      identity_submatrix=True)`` is ``rect_maxvol(A, tol=tol, max_rank=maxK,
      min_rank=max(minK, k + min_add_K), maxvol_iters=start_maxvol_iters, maxvol_tol=1.05,
      identity=identity_submatrix)`` (maxvolpy's ``top_k_index``, pivots among the first rows
      only, has no counterpart: select on ``A[:top]``).

    (Real ``A``; for complex ``A`` the LU start may differ, see :func:`maxvol`.) Only the
    default ``maxvol_iters`` differs (100 against their 10): with 10 the start may
    stop before convergence, and the greedy phase then picks other rows (16 of 58 on teneva's
    own ``default_rng(42)`` 5000 x 50 case at ``tol=1.01``, ``max_rank=58``).

    References
    ----------
    .. [1] A. Mikhalev and I. V. Oseledets, "Rectangular maximum-volume submatrices and their
       applications", Linear Algebra Appl. 538, 2018.
    .. [2] A. Chertkov, teneva (``teneva.maxvol_rect``); A. Mikhalev, maxvolpy
       (``maxvolpy.maxvol.rect_maxvol``).

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg import rect_maxvol
    >>> A = np.random.default_rng(0).standard_normal((60, 4))
    >>> rows, B = rect_maxvol(A, tol=1.0)
    >>> bool(np.linalg.norm(B, axis=1).max() <= 1.0 + 1e-12)
    True
    >>> rows, B = rect_maxvol(A, tol=1.0, min_rank=8, identity=True)
    >>> len(rows) >= 8, bool(np.allclose(B[rows], np.eye(len(rows))))
    (True, True)
    """
    xp = _validation.check_basis(A)
    tol = _check_tol(tol, 0.0)
    if tol <= 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    n, k = A.shape
    max_rank = n if max_rank is None else _validation.check_int(max_rank, "max_rank", minimum=k)
    if max_rank > n:
        raise ValueError(
            f"max_rank must satisfy k={k} <= max_rank <= n={n}, got {max_rank}; pass at most "
            "the number of rows, or None for no cap"
        )
    min_rank = k if min_rank is None else _validation.check_int(min_rank, "min_rank", minimum=k)
    if min_rank > max_rank:
        raise ValueError(
            f"min_rank must satisfy k={k} <= min_rank <= max_rank={max_rank}, got {min_rank}; "
            "lower min_rank or raise max_rank"
        )
    maxvol_iters = _validation.check_int(maxvol_iters, "maxvol_iters", minimum=0)
    if not isinstance(identity, (bool, np.bool_)):
        raise TypeError(f"identity must be a bool, got {type(identity).__name__}")
    with warnings.catch_warnings():
        # An unconverged seed only makes the greedy phase add more rows.
        warnings.simplefilter("ignore", _errors.ConvergenceWarning)
        rows, B = maxvol(A, tol=maxvol_tol, max_iters=maxvol_iters)
    chosen = [int(r) for r in rows]
    device = aac.device(A)
    idx = xp.arange(n, device=device)
    alive = xp.ones((n,), dtype=_backend.real_dtype(A.dtype, xp), device=device)
    for r in chosen:
        alive = xp.where(idx == r, xp.zeros_like(alive), alive)
    norms = xp.sum(_backend.abs2(B), axis=1) * alive
    cplx = _backend.is_complex_dtype(B.dtype)
    while len(chosen) < max_rank:
        # rows already kept score -1: the downdated norms of the others may round below 0
        i = int(xp.argmax(xp.where(alive > 0, norms, -xp.ones_like(norms))))
        if len(chosen) >= min_rank and _backend.to_float(norms[i]) <= tol * tol:
            break
        c = B[i, :]
        v = B @ _backend.conj(c)
        ell = 1.0 / (1.0 + (xp.real(v[i]) if cplx else v[i]))  # v[i] = ||c||^2
        B = xp.concat([B - ell * v[:, None] * c[None, :], ell * v[:, None]], axis=1)
        alive = xp.where(idx == i, xp.zeros_like(alive), alive)
        norms = (norms - (ell * _backend.abs2(v) if cplx else ell * v * v)) * alive
        chosen.append(i)
    # The downdated norms drift by rounding: check the postcondition on B itself.
    outside = xp.max(xp.sum(_backend.abs2(B), axis=1) * alive)
    if len(chosen) >= max_rank and _backend.to_float(outside) > tol * tol:
        warnings.warn(
            f"rect_maxvol reached max_rank={max_rank} rows with a row norm "
            f"{_backend.to_float(outside) ** 0.5:.4g} > tol = {tol} outside them; raise max_rank "
            "or tol",
            _errors.ConvergenceWarning,
            stacklevel=2,
        )
    rows = xp.asarray(chosen, dtype=xp.int64, device=device)
    if identity:
        B[rows, :] = xp.eye(len(chosen), dtype=B.dtype, device=device)
    return rows, B
