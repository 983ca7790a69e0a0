"""PEFT on compressed models: LoRA on the factored layers, through PEFT's custom-module mechanism.

PEFT wraps ``nn.Linear`` (and a few quantized linears it knows); the layers of a compressed
model (:class:`~adapters.layer.InterpolativeLinear`, :class:`~adapters.layer.CURLinear`,
:class:`~adapters.layer.LowRankLinear`, :class:`~adapters.layer.ScatteredLinear`,
:class:`~adapters.layer.GatheredLinear`) are none of those, so ``get_peft_model`` refuses them
by name and ``target_modules="all-linear"`` passes them over. :func:`register` makes a
``LoraConfig`` reach them: it registers :class:`FactoredLoraLinear` for every factored layer
type with ``LoraConfig._register_custom_module`` (PEFT's documented, experimental extension
point for layer types it does not know) and, for ``"all-linear"``, names the factored layers
next to the dense ones PEFT picks.  PEFT keeps that registration on the config object only
(it is not written to ``adapter_config.json``), so the config of a saved adapter is passed
through :func:`register` again when it is loaded.

>>> from peft import LoraConfig, PeftModel, get_peft_model                      # doctest: +SKIP
>>> from adapters.peft import register                                          # doctest: +SKIP
>>> peft_model = get_peft_model(model, register(LoraConfig(target_modules="all-linear"), model=model))  # doctest: +SKIP
>>> peft_model.save_pretrained("lora")                                          # doctest: +SKIP
>>> config = register(LoraConfig.from_pretrained("lora"))                       # doctest: +SKIP
>>> peft_model = PeftModel.from_pretrained(compressed, "lora", config=config)   # doctest: +SKIP
>>> dense = peft_model.merge_and_unload()   # LoRA'd layers folded into nn.Linear  # doctest: +SKIP

Needs ``peft`` (``pip install curlinalg[adapters]`` installs it); ``import adapters`` does not
import this module.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as _LoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from .layer import SAVED_LINEARS

__all__ = ["FactoredLoraLinear", "all_linear_names", "register"]

#: ``init_lora_weights`` values that do not read the base weight (PEFT's default, zero B, Gaussian A).
PLAIN_INITS = (True, False, "gaussian")

_ERR_VARIANT = (
    "LoRA on a {layer} supports plain LoRA (with rsLoRA, dropout, lora_bias, rank and alpha patterns), "
    "which adds s B A x to the layer's output; the config asks for {what}, which needs the dense weight "
    "of the layer. Fold the compressed layers first (adapters.merge(model)), or leave these layers out "
    "of target_modules"
)
_ERR_MERGE = (
    "a LoRA update cannot be merged into the factors of a {layer} in place: W + s B A is not of the "
    "layer's form at its rank. Call merge_and_unload(), which replaces each such layer by a dense "
    "nn.Linear holding W + s B A, or keep the adapter unmerged (it runs as y = f(x) + s B A x)"
)


class FactoredLoraLinear(_LoraLinear):
    """PEFT's LoRA around a factored layer ``f``: ``y = f(x) + s B A x``, ``f`` left frozen.

    Built by PEFT (``LoraConfig._register_custom_module``, see :func:`register`), not by hand.
    Everything that only uses the layer's input and output is PEFT's own ``lora.Linear``:
    forward, several adapters, ``adapter_names`` batches, saving and loading the adapter.

    Parameters
    ----------
    base_layer : CURLinear, InterpolativeLinear, LowRankLinear, ScatteredLinear or GatheredLinear
        The factored layer; its ``in_features`` and ``out_features`` size ``A`` and ``B``.
    adapter_name : str
    config : peft.LoraConfig
    r, lora_alpha : int
        Rank and scale (``s = lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA).
    **kwargs
        What PEFT passes to its LoRA layers.

    Raises
    ------
    NotImplementedError
        For a variant or an initialisation that reads the dense weight (DoRA, PiSSA, OLoRA,
        CorDA, LoftQ, ...); the message says how to proceed.

    Notes
    -----
    ``merge_and_unload()`` replaces the wrapper by an ``nn.Linear`` with weight
    ``W + sum_a s_a B_a A_a`` (``W`` the layer's :meth:`weight_product`, formed in float32 and
    rounded once for half precision) and bias ``b + sum_a s_a b_a`` with ``lora_bias``: dense,
    not factored.  A rank-``k`` update moves ``W`` off the set the layer represents (an
    interpolative layer's kept rows and their interpolation, a CUR's columns and rows); the sum
    is exactly a low-rank product of rank ``r + k``, but stored as one it costs
    ``(m + n)(r + k)`` parameters, more than the interpolative layer's ``r n + (m - r) r`` and,
    at the ranks compression keeps, often more than dense.  To keep the compression, keep the
    adapter unmerged (``k (m + n)`` parameters per layer) or ``unload()`` it.  In-place
    ``merge()`` (``merge_adapter()``) raises, since the base layer has no weight to add to.
    """

    def __init__(self, base_layer, adapter_name, config, r: int = 0, lora_alpha: int = 1, **kwargs):
        init = config.init_lora_weights
        if not any(init is v or init == v for v in PLAIN_INITS):
            raise NotImplementedError(_ERR_VARIANT.format(layer=type(base_layer).__name__,
                                                          what=f"init_lora_weights={init!r}"))
        super().__init__(base_layer, adapter_name, config=config, r=r, lora_alpha=lora_alpha, **kwargs)
        self.fan_in_fan_out = False  # a factored layer maps (..., in) to (..., out), like nn.Linear

    def resolve_lora_variant(self, *, config, **kwargs):
        """Plain LoRA only: a variant (DoRA, ...) raises :class:`NotImplementedError`."""
        asked = [f.name for f in dataclasses.fields(config)
                 if f.metadata.get("is_lora_variant") and getattr(config, f.name)]
        if asked:
            raise NotImplementedError(_ERR_VARIANT.format(layer=type(self.get_base_layer()).__name__,
                                                          what=", ".join(f"{a}=..." for a in asked)))
        return None

    def _get_in_out_features(self, module):
        return module.in_features, module.out_features  # PEFT's lookup knows the layers it ships only

    def _get_base_layer_device_and_dtype(self, base_layer):
        # PEFT reads ``weight``, which a factored layer does not have: the adapter follows its factors
        first = next((p for p in base_layer.parameters() if p.is_floating_point()), None)
        return (None, None) if first is None else (first.device, first.dtype)

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        """Refused: see the class Notes (``merge_and_unload()`` folds into a dense layer)."""
        raise NotImplementedError(_ERR_MERGE.format(layer=type(self.get_base_layer()).__name__))

    def unload_and_optionally_merge_module(self, merge: bool, safe_merge: bool, adapter_names=None) -> nn.Module:
        """What ``unload()`` and ``merge_and_unload()`` put in this layer's place.

        Returns
        -------
        torch.nn.Module
            The factored layer (``merge=False``), or an ``nn.Linear`` holding the layer plus the
            active (or named) adapters (``merge=True``).

        Raises
        ------
        ValueError
            With ``safe_merge``, if the merged weight or bias is not finite.
        """
        base = self.get_base_layer()
        if not merge:
            return base
        names = [a for a in check_adapters_to_merge(self, adapter_names) if a in self.lora_A]
        return self._merged_linear(names, safe=safe_merge)

    @torch.no_grad()
    def _merged_linear(self, names, *, safe: bool) -> nn.Linear:
        base = self.get_base_layer()
        first = next(p for p in base.parameters() if p.is_floating_point())
        work = torch.float32 if first.dtype in (torch.float16, torch.bfloat16) else first.dtype
        source = copy.deepcopy(base).to(work) if work != first.dtype else base
        W = source.weight_product()
        b = None if source.bias is None else source.bias.detach().clone()
        for a in names:
            s = self.scaling[a]
            W = W + (self.lora_B[a].weight.to(work) @ self.lora_A[a].weight.to(work)) * s
            if self.lora_bias[a]:
                extra = self.lora_B[a].bias.to(work) * s
                b = extra if b is None else b + extra
        if safe and not (torch.isfinite(W).all() and (b is None or torch.isfinite(b).all())):
            raise ValueError(f"NaNs or infs in the merged weights of adapters {names}; they seem to be broken")
        lin = nn.Linear(base.in_features, base.out_features, bias=b is not None, device=first.device, dtype=first.dtype)
        lin.weight.copy_(W)
        if b is not None:
            lin.bias.copy_(b)
        return lin


def all_linear_names(model: nn.Module, /, *, config: LoraConfig | None = None) -> set[str]:
    """What ``target_modules="all-linear"`` means for a compressed model: PEFT's choice plus the factored layers.

    Parameters
    ----------
    model : torch.nn.Module
    config : peft.LoraConfig, optional
        Its ``task_type`` decides, as in PEFT, which classification head is left out.

    Returns
    -------
    set of str
        The dense linear and ``Conv1D`` layers PEFT's ``"all-linear"`` picks (every one but the
        output layer) and every factored layer but the output layer, outside LoRA wrappers.
    """
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

    probe = LoraConfig(target_modules="all-linear", task_type=getattr(config, "task_type", None))
    dense = set(_maybe_include_all_linear_layers(probe, model).target_modules)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    wrappers = [name for name, mod in model.named_modules() if isinstance(mod, BaseTunerLayer)]
    factored = {
        name for name, mod in model.named_modules()
        if isinstance(mod, SAVED_LINEARS) and mod is not output
        and not any(name.startswith(w + ".") for w in wrappers)
    }
    return dense | factored


def register(config: LoraConfig, /, *, model: nn.Module | None = None) -> LoraConfig:
    """Make a ``LoraConfig`` reach the factored layers of a compressed model.

    Parameters
    ----------
    config : peft.LoraConfig
        Changed in place and returned.
    model : torch.nn.Module, optional
        Needed when ``config.target_modules`` is ``"all-linear"``, which is replaced by
        :func:`all_linear_names` of the model (the dense layers PEFT would pick, plus the
        factored ones).

    Returns
    -------
    peft.LoraConfig
        ``config``, with :class:`FactoredLoraLinear` registered for every factored layer type
        (:data:`adapters.layer.SAVED_LINEARS`).

    Raises
    ------
    TypeError
        If ``config`` is not a ``LoraConfig`` (only LoRA has PEFT's custom-module mechanism).
    ValueError
        For ``"all-linear"`` without ``model``.

    Notes
    -----
    PEFT dispatches a target to a LoRA layer class by the target's type, and
    ``LoraConfig._register_custom_module`` adds a type to that dispatch for one config. The
    registration is not saved with the adapter, so pass the loaded config through here again:
    ``PeftModel.from_pretrained(model, path, config=register(LoraConfig.from_pretrained(path)))``.
    A saved ``"all-linear"`` adapter records the expanded names, so loading needs no ``model``.

    Examples
    --------
    >>> from peft import LoraConfig
    >>> config = register(LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    >>> sorted(cls.__name__ for cls in config._custom_modules)[:2]
    ['CURLinear', 'GatheredLinear']
    """
    if not isinstance(config, LoraConfig):
        raise TypeError(
            f"register expects a peft.LoraConfig, got {type(config).__name__}; LoRA is the PEFT method with "
            "custom-module support"
        )
    config._register_custom_module({cls: FactoredLoraLinear for cls in SAVED_LINEARS})
    targets = config.target_modules
    if isinstance(targets, str) and targets.lower() == "all-linear":
        if model is None:
            raise ValueError(
                "target_modules='all-linear' is resolved against a model, and PEFT's own resolution skips the "
                "factored layers; pass the model: register(config, model=model)"
            )
        config.target_modules = all_linear_names(model, config=config)
    return config
