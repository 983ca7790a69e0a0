"""Routed experts stored as fused 3-D parameters, opened up into one linear layer per expert matrix.

transformers stores the experts of Mixtral, Qwen2-MoE, Qwen3-MoE and most other MoE families as
two 3-D parameters (``gate_up_proj``: experts x 2 intermediate x hidden, ``down_proj``: experts x
hidden x intermediate) and loops over the experts that received tokens.  To make every expert's
matrix a target of its own, calibrated on the tokens routed to it, :func:`open_experts` replaces
such a module by :class:`ExpertLinears`: the same routing loop over per-expert
:class:`torch.nn.Linear` layers whose weights are views of the fused parameters (no copy, same
function, same parameter count).  The forward pre-hooks of :mod:`adapters.calibration` then see
exactly the tokens routed to each expert.
"""

from __future__ import annotations

import torch
from torch import nn

from .layer import _shared_linear

__all__ = ["ExpertLinears", "close_experts", "fused_experts_problem", "is_fused_experts", "open_experts"]


def is_fused_experts(module: nn.Module, /) -> bool:
    """Whether ``module`` holds routed experts as fused 3-D parameters (``down_proj`` and ``gate_up_proj`` or ``up_proj``)."""
    down = getattr(module, "down_proj", None)
    up = getattr(module, "gate_up_proj", getattr(module, "up_proj", None))
    return all(isinstance(p, nn.Parameter) and p.ndim == 3 for p in (down, up))


def _own_gate(module: nn.Module):
    """The module's ``_apply_gate`` when its class defines its own (None for transformers' default)."""
    gate = getattr(type(module), "_apply_gate", None)
    return None if gate is None or gate.__name__ == "_default_apply_gate" else gate


def fused_experts_problem(module: nn.Module, /) -> str | None:
    """Why a fused experts module cannot be opened up (None when it can).

    The layout is read from the attributes transformers' ``use_experts_implementation`` sets
    (``has_gate``, ``has_bias``, ``is_transposed``, ``has_post_expert_norm``); a class's own
    gating (``_apply_gate``, e.g. gpt-oss's clamped, interleaved SwiGLU) is kept. A module that
    normalises each expert's output is left dense, with this text as the reason in the report.
    """
    if not isinstance(getattr(module, "num_experts", None), int):
        return f"fused experts without num_experts ({type(module).__name__})"
    if getattr(module, "has_post_expert_norm", False):
        return f"fused experts with a norm after each expert ({type(module).__name__})"
    uses_act = not getattr(module, "has_gate", True) or _own_gate(module) is None
    if uses_act and not callable(getattr(module, "act_fn", None)):
        return f"fused experts without act_fn ({type(module).__name__})"
    return None


class _Expert(nn.Module):
    """One expert: ``gate_up_proj`` (or ``up_proj``) and ``down_proj`` as linear layers."""

    def __init__(self, up_name: str, up: nn.Module, down: nn.Module):
        super().__init__()
        self.up_name = up_name
        setattr(self, up_name, up)
        self.down_proj = down


class ExpertLinears(nn.Module):
    """Routed experts as one pair of linear layers per expert, with transformers' routing loop.

    Expert ``e`` is the child module ``"e"`` (its layers are named ``experts.{e}.gate_up_proj``
    and ``experts.{e}.down_proj``, as transformers named them before it fused them); ``len``
    and indexing give the experts.

    Parameters
    ----------
    experts : iterable of nn.Module
        One module per expert with ``gate_up_proj`` (gated experts: the gate rows, then the up
        rows) or ``up_proj``, and ``down_proj``; each a linear layer or a factored one.
    act_fn : callable
        The experts' activation.
    has_gate : bool
        Gated experts: ``down(gate_fn(gate_up))``; otherwise ``down(act(up))``.
    gate_fn : callable, optional
        ``gate_fn(gate_up) -> hidden``; default transformers' ``act(gate) * up`` with the gate
        rows first.
    fused : nn.Module, optional
        The fused module it was opened from, without its parameters (kept unregistered): what
        :meth:`close` fills again. Set by :func:`open_experts`.

    Notes
    -----
    ``forward(hidden_states, top_k_index, top_k_weights)`` is the eager loop of transformers'
    fused experts (``MixtralExperts.forward``): each expert that received tokens maps them, the
    outputs are scaled by their routing weights and summed per token.  Built by
    :func:`open_experts`; the fused module's experts implementation (``grouped_mm`` ...) is not
    used, since a factored expert has no 3-D weight to batch.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> pair = lambda: nn.ModuleDict({"gate_up_proj": nn.Linear(4, 6), "down_proj": nn.Linear(3, 4)})
    >>> layer = ExpertLinears([pair(), pair()], act_fn=torch.relu, has_gate=True)
    >>> layer(torch.ones(5, 4), torch.zeros(5, 1, dtype=torch.long), torch.ones(5, 1)).shape
    torch.Size([5, 4])
    """

    def __init__(self, experts, /, *, act_fn, has_gate: bool = True, gate_fn=None, fused=None):
        super().__init__()
        experts = list(experts)
        for e, expert in enumerate(experts):
            self.add_module(str(e), expert)
        self.act_fn = act_fn
        self.has_gate = has_gate
        self.gate_fn = gate_fn
        self.num_experts = len(experts)
        self.up_name = "gate_up_proj" if has_gate else "up_proj"
        self.__dict__["_fused"] = fused  # not a child: its (absent) tensors are not the model's

    @torch.no_grad()
    def close(self) -> nn.Module:
        """The fused experts module again, its 3-D parameters stacked from the dense experts.

        Returns
        -------
        nn.Module
            Of the class :func:`open_experts` opened (``MixtralExperts`` ...), with the layout
            it had (``is_transposed``, biases), so the family's own class loads its state dict.

        Raises
        ------
        TypeError
            If an expert's layer is not an ``nn.Linear`` (fold the factored ones first:
            :func:`adapters.merge`).
        ValueError
            If this module was not built by :func:`open_experts` (nothing to close into).
        """
        shell = self.__dict__.get("_fused")
        if shell is None:
            raise ValueError(
                "this ExpertLinears was not opened from a fused experts module (built directly), so there "
                "is no fused layout to close into; build it with adapters.experts.open_experts"
            )
        layers = {name: [getattr(self[e], name) for e in range(self.num_experts)]
                  for name in (self.up_name, "down_proj")}
        wrong = sorted({type(m).__name__ for ms in layers.values() for m in ms if not isinstance(m, nn.Linear)})
        if wrong:
            raise TypeError(
                f"closing the experts needs dense nn.Linear experts, got {wrong}; fold the compressed ones "
                "first (adapters.merge or model.dequantize())"
            )
        fused = type(shell).__new__(type(shell))
        fused.__dict__.update(shell.__dict__)
        fused._parameters, fused._buffers, fused._modules = {}, dict(shell._buffers), dict(shell._modules)
        flip = getattr(shell, "is_transposed", False)
        for name, ms in layers.items():
            w = torch.stack([m.weight.T if flip else m.weight for m in ms])
            fused.register_parameter(name, nn.Parameter(w, requires_grad=ms[0].weight.requires_grad))
            if getattr(shell, "has_bias", False):
                b = torch.stack([m.bias for m in ms])
                fused.register_parameter(f"{name}_bias", nn.Parameter(b, requires_grad=ms[0].bias.requires_grad))
        return fused

    def __len__(self) -> int:
        return self.num_experts

    def __getitem__(self, e: int) -> nn.Module:
        return self._modules[str(range(self.num_experts)[e])]

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        out = torch.zeros_like(hidden_states)
        with torch.no_grad():
            mask = nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1).permute(2, 1, 0)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero().reshape(-1).tolist()
        for e in hit:
            if e == self.num_experts:  # expert-parallel sentinel
                continue
            pos, tokens = torch.where(mask[e])
            expert = self[e]
            h = getattr(expert, self.up_name)(hidden_states[tokens])
            if self.has_gate and self.gate_fn is not None:
                h = self.gate_fn(h)
            elif self.has_gate:
                gate, up = h.chunk(2, dim=-1)
                h = self.act_fn(gate) * up
            else:
                h = self.act_fn(h)
            y = expert.down_proj(h) * top_k_weights[tokens, pos, None]
            out.index_add_(0, tokens, y.to(out.dtype))
        return out

    @torch.no_grad()
    def own_storage(self) -> None:
        """Give every dense expert weight its own storage (they start as views of the fused tensors).

        After compression the factored experts no longer need the fused tensors; copying the
        few dense ones lets those be freed, and checkpoints need unshared tensors.
        """
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                for name in ("weight", "bias"):
                    p = getattr(mod, name)
                    if p is not None:
                        setattr(mod, name, nn.Parameter(p.detach().clone(memory_format=torch.contiguous_format),
                                                        requires_grad=p.requires_grad))


def _open(module: nn.Module) -> ExpertLinears:
    has_gate = getattr(module, "has_gate", True)
    up_name = "gate_up_proj" if has_gate else "up_proj"
    up, down = getattr(module, up_name), module.down_proj
    up_b = getattr(module, f"{up_name}_bias", None) if getattr(module, "has_bias", False) else None
    down_b = getattr(module, "down_proj_bias", None) if getattr(module, "has_bias", False) else None
    flip = getattr(module, "is_transposed", False)
    grad = up.requires_grad
    experts = []
    for e in range(module.num_experts):
        w_up, w_down = (up[e].T, down[e].T) if flip else (up[e], down[e])
        experts.append(_Expert(
            up_name,
            _shared_linear(w_up, None if up_b is None else up_b[e], requires_grad=grad),
            _shared_linear(w_down, None if down_b is None else down_b[e], requires_grad=grad),
        ))
    # A copy of the module without its fused tensors: the class's own gating is bound to it, and
    # ExpertLinears.close fills it again.
    shell = type(module).__new__(type(module))
    shell.__dict__.update(module.__dict__)
    shell._parameters = {}
    gate_fn = shell._apply_gate if has_gate and _own_gate(module) is not None else None
    return ExpertLinears(experts, act_fn=getattr(module, "act_fn", None), has_gate=has_gate, gate_fn=gate_fn,
                         fused=shell)


@torch.no_grad()
def open_experts(model: nn.Module, /, *, names=None) -> list[tuple[nn.Module, str, nn.Module]]:
    """Replace every openable fused experts module of ``model`` by :class:`ExpertLinears`, in place.

    Parameters
    ----------
    model : nn.Module
    names : iterable of str, optional
        Only these dotted module names (a checkpoint's record); default every fused experts
        module for which :func:`fused_experts_problem` finds nothing.

    Returns
    -------
    list of (parent, attribute, old module)
        What was replaced, so that a caller can put the fused modules back.

    Raises
    ------
    ValueError
        A name in ``names`` that is not an openable fused experts module.
    """
    wanted = None if names is None else set(names)
    chosen = [(n, m) for n, m in model.named_modules()
              if (wanted is None or n in wanted) and is_fused_experts(m) and fused_experts_problem(m) is None]
    if wanted is not None and {n for n, _ in chosen} != wanted:
        missing = sorted(wanted - {n for n, _ in chosen})
        raise ValueError(
            f"expected fused experts modules (3-D gate_up_proj/down_proj parameters) at {missing}; the "
            "architecture has none there. The checkpoint and this transformers version disagree"
        )
    swaps = []
    for name, mod in chosen:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        swaps.append((parent, attr, mod))
        setattr(parent, attr, _open(mod))
    return swaps


def close_experts(model: nn.Module, /) -> int:
    """Replace every :class:`ExpertLinears` of ``model`` by its fused module again (:meth:`ExpertLinears.close`).

    Returns
    -------
    int
        The number closed.
    """
    swaps = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, ExpertLinears)]
    for name, mod in swaps:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, mod.close())
    return len(swaps)
