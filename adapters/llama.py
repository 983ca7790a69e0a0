"""Preset for the Llama family (Llama 2/3, SmolLM2, TinyLlama, ...): :func:`compress`, :func:`plan`."""

from __future__ import annotations

from .presets import LLAMA

__all__ = ["LLAMA_TARGETS", "compress", "plan"]

LLAMA_TARGETS = LLAMA.targets


def compress(model, config=None, /, *, calibration=None, tokenizer=None, progress=True, heal=False, **options):
    """Compress a Llama-family model, in place, with the Llama module names fixed.

    Parameters
    ----------
    model : transformers LlamaForCausalLM
        ``model.config.model_type`` must be ``"llama"``; modified in place.
    config : CompressionConfig or Plan, optional
        Default :class:`adapters.StructuredConfig` (-10% parameters: whole MLP neurons kept,
        one width for every layer, ``down`` refitted; the result is a stock ``LlamaForCausalLM``
        with a smaller ``intermediate_size``); keyword options are its fields. Its ``targets``
        must be a subset of ``q k v o gate up down``.
    calibration : optional
        Default: the bundled default calibration set (:mod:`adapters.texts`), encoded with ``tokenizer``, the
        model's ``tokenizer`` attribute, or the tokenizer saved beside the model.
    tokenizer, progress, heal, **options
        As :func:`adapters.compress`.

    Returns
    -------
    model, report : nn.Module, adapters.CompressionReport

    Raises
    ------
    ValueError
        A model of another family (e.g. Phi-3, whose fused ``qkv_proj`` this preset would
        miss), or targets outside the Llama names.
    adapters.CalibrationError
        No calibration given and no tokenizer found; the message says how to pass one.

    References
    ----------
    CURing (2025), arXiv 2501.04211.

    Examples
    --------
    >>> import adapters                                         # doctest: +SKIP
    >>> model, report = adapters.llama.compress(model)         # doctest: +SKIP
    """
    return LLAMA.compress(model, config, calibration=calibration, tokenizer=tokenizer, progress=progress,
                          heal=heal, **options)


def plan(model, config=None, /, *, calibration=None, tokenizer=None, progress=True, **options):
    """:func:`adapters.plan` with the Llama names fixed (see :func:`compress`)."""
    return LLAMA.plan(model, config, calibration=calibration, tokenizer=tokenizer, progress=progress, **options)
