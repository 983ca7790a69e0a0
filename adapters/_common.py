"""Shared small pieces: the project warning class, parameter counting, the architecture a config builds."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["AdaptersWarning", "architecture_twin", "count_parameters"]


class AdaptersWarning(UserWarning):
    """Warnings raised by :mod:`adapters` (filter them with this class)."""


def count_parameters(model: nn.Module, /) -> int:
    """Number of distinct parameters (tied weights counted once), as ``model.parameters()``.

    A tied weight is one parameter object, so ``parameters()`` yields it once; accelerate's
    offload hooks (``cpu_offload``) replace each module's parameters by separate ``meta``
    ones, so there a parameter that transformers declares tied (``all_tied_weights_keys``) to
    another one still present is not counted again.
    """
    params = dict(model.named_parameters())
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return sum(p.numel() for n, p in params.items()
               if not (p.device.type == "meta" and tied.get(n) in params))


def architecture_twin(model: nn.Module, /) -> nn.Module | None:
    """``model``'s class built again from its config (without a compression record), on ``meta``.

    What ``from_pretrained`` would build before any record is applied: the family's own module
    types and buffer dtypes, with nothing allocated. None for a model transformers cannot build
    from its config alone (or that is not a ``PreTrainedModel``).
    """
    if not hasattr(model, "config") or not hasattr(type(model), "_from_config"):
        return None
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    try:
        with torch.device("meta"):
            return type(model)._from_config(config, dtype=dtype)
    except (TypeError, ValueError, RuntimeError, NotImplementedError, AttributeError):
        return None


def _glibc_function(name: str):
    """The C library's function ``name``, or None where there is none (no glibc: macOS, Windows)."""
    import ctypes
    import ctypes.util

    lib = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(lib), name) if lib else None
    except (OSError, AttributeError):
        return None


def release_memory() -> bool:
    """Collect garbage and hand the C heap's free pages back to the operating system.

    Dropping a model's dense layers frees their memory inside the process, but glibc keeps the
    freed pages of its heap for later allocations, so the resident size stays as high as it
    was; ``malloc_trim(0)`` returns them. Used by the demo between compressing and scoring, so
    that the scoring's working memory reuses what compression freed instead of adding to it
    (measured in ``benchmarks/demo_memory.py``).

    Returns
    -------
    bool
        Whether the heap was trimmed (False where there is no glibc, e.g. macOS or Windows).
    """
    import gc

    gc.collect()
    trim = _glibc_function("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


#: glibc's ``mallopt`` parameters (malloc.h): the free space at the top of a heap past which
#: ``free`` returns it (``M_TRIM_THRESHOLD``), the block size served by ``mmap`` (``M_MMAP_THRESHOLD``).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: The demo's threshold: its tensors of a megabyte or more are mapped on their own.
MMAP_THRESHOLD = 1 << 20


def map_large_blocks(threshold: int = MMAP_THRESHOLD, /) -> bool:
    """Have glibc's ``malloc`` serve every block of ``threshold`` bytes or more by ``mmap``, for the rest of the process.

    glibc maps large blocks on their own and unmaps them when freed, but it raises that
    threshold (to at most 32 MiB) each time such a block is freed, so that later tensors of a
    few megabytes are carved from its heaps instead, where short-lived ones leave holes between
    long-lived ones that the resident size keeps until ``malloc_trim``
    (:func:`release_memory`). Setting the threshold fixes it and turns that raising off; the
    heaps' trim threshold is set to twice it, as glibc's own raising would. Used by the demo
    before loading the model: compressing (which adds each layer's fitted modules beside the
    working tensors of the next) then stays closer to the memory it needs.

    Parameters
    ----------
    threshold : int, default :data:`MMAP_THRESHOLD` (1 MiB)
        Bytes.

    Returns
    -------
    bool
        Whether glibc took the setting (False where there is no glibc, e.g. macOS or Windows).

    Raises
    ------
    ValueError
        If ``threshold`` is not a positive number of bytes.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold <= 0:
        raise ValueError(f"expected a positive number of bytes for threshold, got {threshold!r}")
    mallopt = _glibc_function("mallopt")
    return mallopt is not None and mallopt(_M_MMAP_THRESHOLD, threshold) == 1 and mallopt(_M_TRIM_THRESHOLD,
                                                                                          2 * threshold) == 1
