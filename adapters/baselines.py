"""SVD-type baselines for the quality benchmark: plain, activation-scaled and whitened SVD.

Each is :func:`adapters.compress` with an :class:`adapters.SVDConfig`: every compressed weight
becomes a :class:`~adapters.layer.LowRankLinear` ``W ~ A B`` (``r (m + n)`` parameters), ranks
allocated to the same exact budget by the same allocator.
"""

from __future__ import annotations

from .compression import compress
from .configs import SVD_KINDS as KINDS
from .configs import SVDConfig
from .layer import LowRankLinear, svd_params

__all__ = ["KINDS", "LowRankLinear", "compress_svd", "svd_params"]


def compress_svd(model, /, *, calibration, kind: str = "whitened", tokenizer=None, progress: bool = True, **options):
    """Truncated-SVD baseline with global rank allocation to an exact budget (in place).

    Parameters
    ----------
    model : transformers PreTrainedModel
    calibration, tokenizer, progress
        As :func:`adapters.compress`.
    kind : {"plain", "scaled", "whitened"}
        ``"plain"``: SVD of ``W``. ``"scaled"``: of ``W diag(rms(x))`` (ASVD-style).
        ``"whitened"``: of ``W L`` with ``L L^T = X^T X`` (SVD-LLM).
    **options
        Fields of :class:`adapters.SVDConfig` (``reduction``, ``target_params``, ``targets``,
        ``token_weighting``, ...).

    Returns
    -------
    model, report : nn.Module, CompressionReport
        ``report.method`` is ``"svd"``, ``report.options["kind"]`` the kind.

    References
    ----------
    Yuan et al. (2023), "ASVD", arXiv 2312.05821. Wang et al. (2024), "SVD-LLM", arXiv 2403.07378.
    """
    return compress(model, SVDConfig.with_options(kind=kind, **options), calibration=calibration,
                    tokenizer=tokenizer, progress=progress)
