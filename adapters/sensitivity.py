"""How much the model's loss cares about each output of a module: the gradient statistics of
K-FAC's output side, gathered by backward passes over the calibration tokens.

A module ``y = W x`` fitted as ``W'`` changes each token's output by ``e_t = (W - W') x_t``.
To second order the calibration loss grows by ``1/2 sum_t e_t^T F_t e_t`` where ``F`` is the
Fisher information of the loss at ``y``; K-FAC (Martens & Grosse 2015) approximates
``E[e^T F e]`` by ``trace(E H E^T G)`` with the input covariance ``H = sum_t x_t x_t^T``
(what every fit here already weights by) and the gradient covariance
``G = sum_t g_t g_t^T``, ``g_t = dL / dy_t``. Keeping the diagonal of ``G`` gives the
two-sided weighted error ``||D^{1/2} E L||_F^2`` (``D = diag(G)``, ``L L^T = H``): each output
row of the error counts by how much the loss cares about it, and errors of different modules
are in one unit, the loss, so one allocation can compare them (KFAC-SVD, LEMS; Chee et al.'s
and MoDeGPT's module-wise fits weight by ``H`` alone).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .offload import compute_device

__all__ = ["OutputSensitivity", "check_causal_lm", "fit_weights", "output_sensitivity"]

_ERR_NO_LOSS = (
    "loss-aware compression needs the calibration loss: a model whose forward takes labels= and returns "
    "a loss (a causal LM head, e.g. LlamaForCausalLM); {name} returned none. Pass loss_aware=() to "
    "compress it by the activations alone"
)
_ERR_NOT_CAUSAL = (
    "loss_aware weighs errors by the gradient of the next-token loss, so it needs a causal language model "
    "(a class of transformers' MODEL_FOR_CAUSAL_LM_MAPPING, e.g. LlamaForCausalLM, GPT2LMHeadModel); got "
    "{name}. Pass loss_aware=() to compress it by the activations alone"
)
_ERR_NO_GRADIENT = (
    "loss-aware compression found no gradient at the output of {names} (the loss does not depend on "
    "{them} on the calibration tokens, e.g. an expert no token was routed to); leave {them} out with "
    "exclude=, or pass loss_aware=()"
)


@dataclass
class OutputSensitivity:
    """The diagonal of the gradient covariance at one module's output.

    Attributes
    ----------
    sq_grad : torch.Tensor
        ``(out_features,)`` float64: ``sum_t (dL / dy_t)_i^2`` over the calibration tokens,
        where ``L`` is the summed next-token cross-entropy of the calibration windows.
    tokens : int
        Token rows summed (padding left out).
    """

    sq_grad: torch.Tensor
    tokens: int = 0

    def row_weights(self) -> torch.Tensor:
        """``sqrt(sq_grad / tokens)``: the factor of each output row in the two-sided error."""
        return torch.sqrt(self.sq_grad / max(self.tokens, 1))


def check_causal_lm(model: nn.Module, /) -> None:
    """Refuse, before any work, a model whose loss is not the next-token loss of its inputs.

    Raises
    ------
    ValueError
        ``type(model)`` is not a causal LM class of transformers (a classifier, a masked LM,
        a bare base model).
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal = {n for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for n in ((v,) if isinstance(v, str) else v)}
    name = type(model).__name__
    if name not in causal and not name.endswith("ForCausalLM"):
        raise ValueError(_ERR_NOT_CAUSAL.format(name=name))


def fit_weights(config, sensitivity: dict | None, name: str, kind: str, /) -> torch.Tensor | None:
    """The output-row weights the curve and the fit of the unit ``name`` take, or None.

    Parameters
    ----------
    config : CompressionConfig
        Weights are given under ``loss_aware`` with ``"fit"`` only.
    sensitivity : dict of str to OutputSensitivity or None
        :func:`output_sensitivity`'s result (None: not measured).
    name : str
        The unit (or matrix).
    kind : str
        Its unit kind; a matrix (``"linear"``) is fitted in the input metric alone.

    Returns
    -------
    torch.Tensor or None
        :meth:`OutputSensitivity.row_weights` of ``name``.
    """
    if sensitivity is None or kind == "linear" or "fit" not in getattr(config, "loss_aware", ()):
        return None
    return sensitivity[name].row_weights()


def _labels(ids: torch.Tensor, mask) -> torch.Tensor:
    return ids if mask is None else ids.masked_fill(~mask.to(ids.device), -100)


def output_sensitivity(model: nn.Module, batches, modules: dict, /, *, progress: bool = True
                       ) -> dict[str, OutputSensitivity]:
    """Backward passes of the calibration loss; the gradient second moments at each module's output.

    Parameters
    ----------
    model : transformers PreTrainedModel
        A model whose forward takes ``labels=`` and returns ``loss`` (causal LM). Its
        parameters are not trained: their ``requires_grad`` is off during the passes (and
        restored), and only the activations carry gradients.
    batches : CalibrationBatches or list of torch.Tensor
        Token batches (:func:`adapters.calibration.prepare_calibration`); their ``masks``
        keep padding out of the loss and of the sums.
    modules : dict of str to nn.Module
        The modules whose outputs are watched, by name (a structured unit by its anchor: an
        MLP's ``down_proj``, an attention's ``o_proj``).
    progress : bool

    Returns
    -------
    dict of str to OutputSensitivity

    Raises
    ------
    ValueError
        The model returns no loss, or a watched module received no gradient.

    Notes
    -----
    One forward and one backward pass per calibration window over the whole model (about
    three forward passes of cost), with the activations of one window alive at a time. The
    loss is the sum (not the mean) of the tokens' cross-entropies, so ``G`` sums per-token
    gradients as ``H`` sums per-token inputs. Left-padded windows get position ids that count
    their real tokens (as :class:`adapters.calibration.LayerRunner` gives them).

    References
    ----------
    Martens & Grosse (2015), "Optimizing neural networks with Kronecker-factored approximate
    curvature", ICML. Lin et al. (2025), "MoDeGPT", arXiv 2408.09632.
    """
    masks = list(getattr(batches, "masks", None) or [None] * len(batches))
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    out: dict[str, OutputSensitivity] = {}
    current = {"mask": None}

    def watch(name):
        def hook(_mod, _args, y):
            y = y[0] if isinstance(y, tuple) else y
            if not (isinstance(y, torch.Tensor) and y.requires_grad):
                return

            def grad(g):
                g = g.detach().reshape(-1, g.shape[-1])
                mask = current["mask"]
                if mask is not None and g.shape[0] == mask.numel():
                    g = g[mask.reshape(-1).to(g.device)]
                g = g.double()
                s = out.get(name)
                if s is None:
                    s = out[name] = OutputSensitivity(torch.zeros(g.shape[1], dtype=torch.float64, device=g.device))
                s.sq_grad += (g * g).sum(0)
                s.tokens += g.shape[0]

            y.register_hook(grad)

        return hook

    def leaf(_mod, _args, y):  # the embeddings' output: where the gradients start
        return y.detach().requires_grad_(True) if isinstance(y, torch.Tensor) and y.is_floating_point() else y

    handles = [mod.register_forward_hook(watch(name)) for name, mod in modules.items()]
    handles.append(model.get_input_embeddings().register_forward_hook(leaf))
    device = compute_device(model.get_input_embeddings())
    takes_positions = "position_ids" in inspect.signature(model.forward).parameters
    try:
        for p in params:
            p.requires_grad_(False)
        # One window at a time: a backward pass keeps every layer's activations and the
        # vocabulary-wide logits and their gradient, which for a batch would dwarf the model.
        rows = [(b[j : j + 1], None if m is None else m[j : j + 1]) for b, m in zip(batches, masks)
                for j in range(b.shape[0])]
        with torch.enable_grad():
            for ids, mask in tqdm(rows, desc="sensitivity", disable=not progress, leave=False):
                current["mask"] = mask
                extra = {}
                if mask is not None:  # as LayerRunner: left padding must not shift the real tokens' positions
                    extra["attention_mask"] = mask.to(device=device, dtype=torch.long)
                    if takes_positions:
                        extra["position_ids"] = (mask.long().cumsum(1) - 1).clamp_min(0).to(device)
                ids = ids.to(device)
                labels = _labels(ids, mask)
                counted = int((labels[:, 1:] != -100).sum())
                if counted == 0:
                    continue
                res = model(input_ids=ids, labels=labels, use_cache=False, **extra)
                loss = getattr(res, "loss", None)
                if loss is None:
                    raise ValueError(_ERR_NO_LOSS.format(name=type(model).__name__))
                (loss.float() * counted).backward()
    finally:
        for h in handles:
            h.remove()
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    missing = [n for n in modules if n not in out or not bool(out[n].sq_grad.any())]
    if missing:
        them = "it" if len(missing) == 1 else "them"
        raise ValueError(_ERR_NO_GRADIENT.format(names=missing[:5], them=them))
    return out
