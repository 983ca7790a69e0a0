"""Output layouts of the factored layers: where a transposed output may skip its copy.

:class:`~adapters.layer.InterpolativeLinear` computes a long input (prefill, training) as rows
of the transposed output ``y^T`` and, by default, copies it into the usual layout. A gated MLP,
``down(act(gate(x)) * up(x))``, reads ``gate``'s and ``up``'s outputs only elementwise and then
through ``down``'s matrix product, both of which take the transposed layout as it is; there the
copy is pure cost. A 2048-token prefill of SmolLM2-135M at -20% on 2 CPU cores ran at 0.860x
of dense with every output copied and 1.039x with ``gate`` and ``up`` returning the view
(1.062x and 1.118x on one thread; benchmarks/inference_cpu.py ``--before``,
``benchmarks/results/inference_cpu_issue14.json``, docs/benchmarks.md section 10, item 6). The
view is not returned for ``q``, ``k``, ``v``: an exploratory run (not kept) was several times
slower there, the rotary embedding and attention being slow on that layout.
"""

from __future__ import annotations

from torch import nn

from .layer import InterpolativeLinear

__all__ = ["GATED_MLP", "is_gated_mlp", "mark_feature_major"]

#: The attribute names of a gated MLP, ``down(act(gate(x)) * up(x))``: a module holding all
#: three is taken for one (Llama, Mistral, Qwen2/3, Gemma 1-3, Phi-3's split form, ...).
GATED_MLP = ("gate_proj", "up_proj", "down_proj")


def is_gated_mlp(module: nn.Module, /, *, of: type = nn.Module) -> bool:
    """Whether ``module`` holds the three :data:`GATED_MLP` children, each an instance of ``of``
    (``nn.Linear`` for an MLP of plain dense layers; any module, factored ones included, by default)."""
    return all(isinstance(getattr(module, attr, None), of) for attr in GATED_MLP)


def mark_feature_major(model: nn.Module, /) -> list[str]:
    """Let the interpolative ``gate`` and ``up`` layers of every gated MLP skip their output copy.

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    list of str
        The names of the layers marked (``feature_major_output = True``).

    Notes
    -----
    Only the layout changes: the values are the same, and every PyTorch operation reads the
    transposed view correctly; a consumer that calls ``.view`` merging the feature dimension
    with another would raise instead (the MLPs above do not). A module is taken for a gated MLP
    when it holds the three :data:`GATED_MLP` children; only its ``gate`` and ``up`` children are
    marked, and only when they are :class:`~adapters.layer.InterpolativeLinear`.
    """
    marked = []
    for name, mod in model.named_modules():
        if not is_gated_mlp(mod):
            continue
        for attr in GATED_MLP[:2]:
            child = getattr(mod, attr)
            if isinstance(child, InterpolativeLinear):
                child.feature_major_output = True
                marked.append(f"{name}.{attr}" if name else attr)
    return marked
