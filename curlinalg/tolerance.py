"""Tolerance mode of :func:`curlinalg.cur` and :func:`curlinalg.interpolative`: the smallest rank
whose certificate meets a target, one search for both."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Any, Callable

from . import _backend, _errors
from .bounds import certify
from .operands import Operand
from .sketch import EXACT_SVD_MAX_DIM, TruncatedSVD

__all__ = ["ToleranceSearch", "TOLERANCE_RANK_FACTOR", "exact_spectrum", "numerical_rank"]

#: Tolerance mode returns a rank at most this factor above the smallest rank whose certificate
#: it saw fail (plus one).
TOLERANCE_RANK_FACTOR = 1.1
#: Tolerance mode first tries the rank where this many times sigma_{k+1} meets the target (a CUR
#: of rank k is typically about twice the truncated SVD's error), capped to stay within
#: TOLERANCE_RANK_FACTOR of the SVD's rank, so that one certificate often settles the search.
INITIAL_ERROR_RATIO = 2.0
#: A sketch grown for rank k gets this many times k columns, so the ranks tried next fit in it.
SKETCH_HEADROOM = 1.3


def numerical_rank(s: Any, shape: tuple[int, int], xp: Any) -> int:
    top = _backend.to_float(s[0])
    if top <= 0:
        return 0
    return _backend.count_above(s, top * max(shape) * float(xp.finfo(s.dtype).eps))


def exact_spectrum(op: Operand, kind: str) -> bool:
    """Whether :func:`curlinalg.cur`'s ``basis=kind`` gives one exact SVD of ``op`` (otherwise
    tolerance mode grows sketches)."""
    return kind == "exact" or (kind == "auto" and min(op.shape) <= EXACT_SVD_MAX_DIM and op.densifiable)


#: What the unreachable-tolerance warning advises by default.
ADVICE = "Ask for a larger tolerance, or use float64 input"


class ToleranceSearch:
    r"""The smallest rank whose certificate meets a tolerance (see :func:`curlinalg.cur`, Notes).

    ``svd_at(l)`` gives a basis of at least ``l`` triplets whose singular values are lower bounds
    of ``op``'s (exact, or a sketch's); with ``exact`` it is called once, for the rank cap, and
    ``s`` must hold every singular value. ``build(svd, k, stacklevel=...)`` gives a result of
    rank ``k`` (at most ``k``: ``result.rank`` says) with ``factors``, certified here against
    ``op`` with ``seed``. Any decomposition whose error is at least :math:`\sigma_{k+1}` at rank
    ``k`` fits: CUR and the ID.
    """

    def __init__(
        self, op: Operand, svd_at: Callable[[int], TruncatedSVD], build: Callable[..., Any],
        rank: int | None, seed: Any, *, exact: bool, advice: str = ADVICE,
    ):
        self.op, self.svd_at, self.build, self.seed, self.xp = op, svd_at, build, seed, op.xp
        self.kmax = min(op.shape)
        self.capped = rank is not None
        self.kcap = self.kmax if rank is None else rank
        self.exact, self.advice = exact, advice
        self.svd: TruncatedSVD | None = None

    def _spectrum(self, rank: int) -> TruncatedSVD:
        """A basis of at least ``rank`` triplets (one exact SVD, or a sketch grown to ``rank``)."""
        if self.exact:
            if self.svd is None:
                self.svd = self.svd_at(self.kcap)
            return self.svd
        have = 0 if self.svd is None else self.svd.U.shape[1]
        if rank > have:
            grown = max(math.ceil(SKETCH_HEADROOM * rank), 2 * have) if have else rank
            self.svd = self.svd_at(min(self.kmax, grown))
        return self.svd

    def _extrapolated(self, svd: TruncatedSVD, level: float) -> int:
        """The rank where the log-linear trend of the sketch's tail reaches ``level`` (at least
        twice the sketch), for the next sketch's size."""
        size = svd.s.shape[0]
        have = svd.U.shape[1]
        first, last = _backend.to_float(svd.s[size // 2]), _backend.to_float(svd.s[-1])
        if not 0 < last < first or level <= 0:
            return 2 * have
        slope = (math.log(last) - math.log(first)) / (size - 1 - size // 2)
        reach = size - 1 + (math.log(level) - math.log(last)) / slope
        return int(min(self.kmax, max(2 * have, math.ceil(reach))))

    def _resolvable(self, svd: TruncatedSVD) -> int:
        """The numerical rank where the spectrum shows it; the largest rank otherwise."""
        numerical = numerical_rank(svd.s, self.op.shape, self.xp)
        if numerical < svd.s.shape[0] or svd.s.shape[0] >= self.kmax:
            return max(numerical, 1)
        return self.kmax

    def _first_at_or_below(self, svd: TruncatedSVD, level: float, limit: int) -> int | None:
        """The smallest ``k`` in [1, limit] with ``s[k] <= level`` (None past the spectrum)."""
        above = _backend.count_above(svd.s, level)
        if above < svd.s.shape[0] or svd.s.shape[0] >= self.kmax:
            return max(1, min(above, limit))
        return None

    def _certified(self, svd: TruncatedSVD, k: int) -> Any:
        res = self.build(svd, k, stacklevel=5)
        return replace(res, certificate=certify(self.op, res, ord=2, rng=self.seed))

    def run(self, rtol: float | None, atol: float | None) -> Any:
        """The result; called from the public function itself, so that warnings point at its
        caller."""
        svd = self._spectrum(min(self.kcap, 32))
        while True:  # grow the sketch until it resolves the tolerance (or covers the cap)
            norm2 = _backend.to_float(svd.s[0])  # a lower estimate: the target stays conservative
            target = max(atol or 0.0, (rtol or 0.0) * norm2)
            limit = min(self.kcap, self._resolvable(svd))
            k_svd = self._first_at_or_below(svd, target, limit)
            if k_svd is not None or svd.U.shape[1] >= self.kcap:
                break
            svd = self._spectrum(self._extrapolated(svd, target))
        k_svd = limit if k_svd is None else k_svd
        # No rank below k_svd meets the target: sigma_k > target and no CUR beats the truncated
        # SVD (a sketch's singular values are lower bounds of the true ones).
        failed, passed, best = k_svd - 1, None, None
        within = max(k_svd, int(TOLERANCE_RANK_FACTOR * k_svd))
        k = min(within, self._first_at_or_below(svd, target / INITIAL_ERROR_RATIO, limit) or within)
        while True:
            svd = self._spectrum(k)
            res = self._certified(svd, k)
            k = res.rank
            bound = res.certificate.bound
            if best is None or bound < best.certificate.bound:
                best = res
            if bound <= target:
                passed = res
            else:
                failed = max(failed, k)
            if passed is not None and passed.rank <= TOLERANCE_RANK_FACTOR * (failed + 1):
                return passed
            if passed is None and k >= limit:
                if self.capped and limit == self.kcap:
                    return res  # the rank cap was met first
                return self._unreachable(best, target, limit)
            k = self._next_rank(svd, res, target, failed, passed, limit)

    def _next_rank(
        self, svd: TruncatedSVD, res: Any, target: float, failed: int, passed: Any, limit: int,
    ) -> int:
        if passed is not None:  # bracketed: bisect
            return max(failed + 1, (failed + passed.rank) // 2)
        # the certified error over sigma_{k+1} at this rank predicts the rank that meets it
        tiny = float(self.xp.finfo(self.op.dtype).tiny)
        s_next = _backend.to_float(svd.s[res.rank]) if svd.s.shape[0] > res.rank else 0.0
        level = target * s_next / max(res.certificate.bound, tiny)
        guess = self._first_at_or_below(svd, level, limit)
        if guess is None:  # past the sketch: grow it once
            guess = self._first_at_or_below(self._spectrum(2 * svd.U.shape[1]), level, limit)
        return min(limit, max(res.rank + 1, guess if guess is not None else 2 * res.rank))

    def _unreachable(self, best: Any, target: float, limit: int) -> Any:
        warnings.warn(
            _errors.UNREACHABLE.format(
                target=target, limit=limit, error=best.certificate.bound, rank=best.rank,
                advice=self.advice,
            ),
            _errors.CURWarning,
            stacklevel=4,
        )
        return best
