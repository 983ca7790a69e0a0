"""Warnings and error messages shared by the package.

Messages are module constants so that tests (and users) can ``match=`` them.
"""

from __future__ import annotations

__all__ = ["CURWarning", "ConvergenceWarning", "RankDeficiencyWarning"]


class CURWarning(UserWarning):
    """Base class of every warning issued by curlinalg."""


class RankDeficiencyWarning(CURWarning):
    """The requested rank exceeds the numerical rank of the input.

    The computation continues at the numerical rank; the result's ``rank`` says which.
    """



class ConvergenceWarning(CURWarning):
    """An iteration stopped at its budget before meeting its tolerance (see the message)."""


NOT_2D = (
    "expected a matrix (m, n), or a stack of matrices (b, m, n) where the function takes one, "
    "got shape {shape}; reshape it to (m, n), or to (b, m, n) for a stack"
)
EMPTY = "expected a non-empty matrix, got shape {shape}"
NOT_FINITE = "the {name} contains NaN or Inf; clean it (e.g. xp.nan_to_num) before calling"
BAD_DTYPE = (
    "expected a floating dtype, float32 or float64 (or complex64, complex128), got {dtype}; cast "
    "first, e.g. A.astype(float64) or A.to(torch.float64)"
)
REAL_ONLY = (
    "{what} supports real matrices only (float32 or float64), got {name} of dtype {dtype}. "
    "{why}"
)
#: Why the activation metric is real-only (``REAL_ONLY``'s ``why`` for the metric routines).
METRIC_REAL_ONLY = (
    "The activation metric ||(A - A')L||_F with LL^T = X^T X is defined for the real weights and "
    "activations of a network; drop metric=/cross= for a complex matrix"
)
MIXED_FIELDS = (
    "operands mix real and complex dtypes: {names}; expected all real or all complex. Cast the "
    "real ones, e.g. x.astype(complex128) or x.to(torch.complex128)"
)
NOT_ARRAY = (
    "expected a matrix: an array from numpy, torch or cupy (anything array-api-compat knows), a "
    "scipy.sparse matrix or a scipy.sparse.linalg.LinearOperator; got {kind}. Convert it, e.g. "
    "np.asarray(A)"
)
OPERATOR_SHAPE = "the LinearOperator's {what} returned shape {got}, expected {want}"
OPERATOR_ADJOINT = (
    "the LinearOperator needs rmatvec or rmatmat (A^H @ y, the conjugate transpose; A.T @ y for "
    "a real A): CUR selects rows through it; build it with "
    "scipy.sparse.linalg.LinearOperator(shape, matvec=..., rmatvec=...)"
)
INT_TYPE = "{name} must be an int, got {kind}"
RNG_KIND = (
    "rng must be None, an int seed, a numpy Generator, or a Generator of the input's own backend "
    "({backend}); got {kind}. Pass an int seed to use the same seed on any backend"
)
NOT_A_RESULT = (
    "result must be a CURResult (or anything with shape and factors = (left, right)), got "
    "{kind}; pass the value returned by cur()"
)
RANK_TYPE = "rank must be an int, got {kind}"
RANK_RANGE = "rank must satisfy 1 <= rank <= min(m, n) = {kmax}, got {rank}"
NO_STOP = "give rank=, rtol= or atol= (or several: whichever is met first wins)"
TOL_VALUE = "{name} must be a finite float >= 0, got {value!r}"
CHOICE = "{name} must be one of {choices}, got {value!r}"
MIXED = (
    "arrays come from different namespaces or devices ({a} and {b}); "
    "move them to one (e.g. with xp.asarray(x, device=...)) first"
)
TALL = "expected a tall basis of shape (n, k) with n >= k >= 1, got shape {shape}"
CORE_RTOL = "core_rtol applies to core='cross' only, got core={core!r}; drop core_rtol"
UNREACHABLE = (
    "tolerance {target:.3g} not reached: the smallest certified error found is {error:.3g}, at "
    "rank {rank} (the ranks tried go up to {limit}, the numerical rank or the rank cap); "
    "returning that rank. {advice}"
)
SVD_UNREACHABLE = (
    "tolerance {target:.3g} not reached: it is below what the SVD resolves. Its bound at the "
    "numerical rank {rank} is {error:.3g}, of which {floor:.3g} is the rounding floor "
    "4 max(m, n) eps ||A||_2; returning that rank. Ask for a larger tolerance, or use float64 "
    "input"
)
LEVERAGE_DEFICIENT = (
    "{method} selection gave {found} indices spanning fewer than rank {k} directions of the "
    "basis; added Q-DEIM's indices ({total} kept) so the bound stays finite. "
    "method='qdeim' or 'deim' picks k well-conditioned indices directly"
)
LEVERAGE_POOR = (
    "{method} selection is poorly conditioned: its constant eta = {eta:.3g} is {ratio:.3g} times "
    "Q-DEIM's on the same basis, and the error bound grows with it. Leverage scores ignore how "
    "rows combine; use method='qdeim' or 'deim' for a small error"
)
MAXVOL_NOT_CONVERGED = (
    "maxvol stopped after max_iters={iters} swaps with max |B| = {top:.4g} > tol = {tol}; "
    "the selection is valid but its constant is looser. Raise max_iters"
)
DASK_UNKNOWN_CHUNKS = (
    "the dask array has unknown chunk sizes (shape {shape}), e.g. after boolean indexing or "
    "from_delayed without a shape; expected known chunks. Call A = A.compute_chunk_sizes() "
    "(one pass over A), or give shape= / chunks= when building it"
)
DASK_NOT_FINITE = (
    "the dask array contains NaN or Inf (found by one pass, da.isfinite(A).all()); expected "
    "finite entries. Clean it lazily before calling, e.g. A = da.nan_to_num(A)"
)

ID_OPERAND = (
    "{what} needs a dense array, got a {kind} input (or basis={basis!r}); convert it with "
    "A.toarray() / np.asarray(A) when it fits in memory, or drop the option"
)
