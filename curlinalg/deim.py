"""DEIM and Q-DEIM: select ``k`` rows of an ``(n, k)`` basis so that ``V[rows]`` is well conditioned."""

from __future__ import annotations

from typing import Any

from . import _backend, _validation

__all__ = ["deim", "qdeim"]


def deim(V: Any, /) -> Any:
    r"""Discrete empirical interpolation (DEIM) row selection.

    Parameters
    ----------
    V : array, shape (n, k)
        A basis with ``n >= k``; usually orthonormal (leading singular vectors), but any full
        column rank matrix works. numpy, torch or cupy; any device.

    Returns
    -------
    rows : int64 array, shape (k,)
        Distinct row indices, in the order DEIM picks them, in ``V``'s namespace and device.

    Raises
    ------
    ValueError
        If ``V`` is not 2-D, is empty, is wider than tall, or holds NaN/Inf.
    TypeError
        If ``V`` is not a float32, float64, complex64 or complex128 array.

    Notes
    -----
    Step ``j`` interpolates column ``v_j`` on the rows chosen so far and picks the row where the
    residual :math:`r = v_j - V_{:,<j} (P^T V_{:,<j})^{-1} P^T v_j` is largest in magnitude.
    That residual is column ``j`` of the Schur complement of Gaussian elimination, so DEIM is
    exactly the row order of LU with partial pivoting: one LAPACK ``getrf`` on the host, one
    ``torch.linalg.lu_factor`` on a GPU, and a pure array-API elimination elsewhere.

    With :math:`\eta = \|(P^T V)^{-1}\|_2`, for orthonormal ``V`` the oblique projector
    :math:`V (P^T V)^{-1} P^T` satisfies :math:`\|f - V(P^TV)^{-1}P^Tf\| \le \eta\,\|(I-VV^T)f\|`
    and a priori :math:`\eta \le \sqrt{nk/3}\,2^k` (Sorensen & Embree 2016, Lemma 3.2); in practice
    :math:`\eta` is small. Compute it for a selection with :func:`curlinalg.selection_constant`.

    Complex ``V``: the largest residual is the largest in modulus, and the bound holds as stated
    (its proof uses :math:`|L_{ij}| \le 1` only). Complex ``getrf`` pivots on
    :math:`|\mathrm{Re}| + |\mathrm{Im}|` instead, so complex bases take the array-API
    elimination on every backend.

    References
    ----------
    .. [1] S. Chaturantabut and D. C. Sorensen, "Nonlinear model reduction via discrete empirical
       interpolation", SIAM J. Sci. Comput. 32(5), 2010.
    .. [2] D. C. Sorensen and M. Embree, "A DEIM induced CUR factorization", SIAM J. Sci.
       Comput. 38(3), 2016.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg import deim
    >>> V = np.linalg.qr(np.random.default_rng(0).standard_normal((8, 3)))[0]
    >>> rows = deim(V)
    >>> rows.shape, len(set(rows.tolist()))
    ((3,), 3)
    """
    _validation.check_basis(V)
    return _backend.lu_row_order(V)


def qdeim(V: Any, /) -> Any:
    r"""Q-DEIM row selection: column-pivoted QR of ``V.T``.

    Parameters
    ----------
    V : array, shape (n, k)
        A basis with ``n >= k``, usually orthonormal. numpy, torch or cupy; any device.

    Returns
    -------
    rows : int64 array, shape (k,)
        Distinct row indices in pivot order, in ``V``'s namespace and device.

    Raises
    ------
    ValueError
        If ``V`` is not 2-D, is empty, is wider than tall, or holds NaN/Inf.
    TypeError
        If ``V`` is not a float32, float64, complex64 or complex128 array.

    Notes
    -----
    Businger-Golub pivoting on :math:`V^T` picks, at each step, the row of ``V`` with the largest
    component orthogonal to the rows already picked. For orthonormal ``V`` this gives the a priori
    bound (Drmac & Gugercin 2016, Theorem 2.1)

    .. math:: \eta = \|(P^T V)^{-1}\|_2 \le \frac{\sqrt{n-k+1}\,\sqrt{4^k + 6k - 1}}{3},

    far better than DEIM's; it holds for complex ``V`` too (``zgeqp3`` pivots on column
    norms). On the host this is LAPACK ``geqp3``; on a GPU (where no pivoted QR
    exists) it is pivoted Gram-Schmidt written in the array API, with the pivot index kept on the
    device, so there is no host round trip per index.

    References
    ----------
    .. [1] Z. Drmac and S. Gugercin, "A new selection operator for the discrete empirical
       interpolation method -- improved a priori error bound and extensions", SIAM J. Sci.
       Comput. 38(2), 2016.
    .. [2] P. Businger and G. H. Golub, "Linear least squares solutions by Householder
       transformations", Numer. Math. 7, 1965.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg import qdeim
    >>> V = np.linalg.qr(np.random.default_rng(0).standard_normal((8, 3)))[0]
    >>> qdeim(V).shape
    (3,)
    """
    _validation.check_basis(V)
    return _backend.pivoted_rows(V)
