"""Module layouts: how each family lays out its MLP, and where a transposed output may skip its copy.

**MLP layouts.** An MLP ``out(act(in(x)))`` of ``N`` neurons is laid out in modules in a few
ways: a gated MLP's ``gate_proj``/``up_proj``/``down_proj`` (Llama and its kin), Phi-3's fused
``gate_up_proj`` (rows ``[gate; up]``), the plain two-layer MLPs of OPT (``fc1``/``fc2``, in the
decoder layer itself), GPT-NeoX and Falcon (``dense_h_to_4h``/``dense_4h_to_h``), GPT-2
(``c_fc``/``c_proj``, ``Conv1D``) and BERT/RoBERTa (``intermediate.dense`` and
``output.dense``, in two children of the layer). One :class:`MLPLayout` describes each: which
projections hold a neuron, how its rows and column sit in them, and which config keys size it.
:func:`find_mlps` finds every MLP of a model with its layout; the structured MLP unit
(:class:`adapters.configs.StructuredConfig`), the planner, the cut and padded layers
(:mod:`adapters.pruned`), the checkpoint record and :func:`adapters.merge` all read that one
description.

**Output layouts of the factored layers.**

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

from dataclasses import dataclass

import torch
from torch import nn

from .experts import ExpertLinears
from .layer import InterpolativeLinear
from .targets import LINEAR_VIEWS, as_linear

__all__ = [
    "GATED", "GATED_MLP", "MLPLayout", "MLP_LAYOUTS", "MLP_MATRIX_NAMES", "find_mlps", "is_gated_mlp", "mark_feature_major",
    "mlp_layout",
]


@dataclass(frozen=True)
class MLPLayout:
    """How one family lays out an MLP ``out(act(in(x)))`` of ``N`` neurons in its modules.

    Attributes
    ----------
    name : str
        What the docs and error messages call it.
    inputs : tuple of str
        The input projections, as paths below the module that holds the MLP (the unit's
        module): neuron ``i`` is row ``i + j N`` of each, for ``j < stacked``.
    output : str
        The output projection: neuron ``i`` is its column ``i``. The unit is calibrated on its
        inputs (the activations) and its weight is refitted.
    stacked : int, default 1
        Blocks of ``N`` rows in each input projection (Phi-3's ``gate_up_proj`` holds the
        gate rows, then the up rows: 2).
    width_keys : tuple of str, default ("intermediate_size",)
        The model-config attributes that may size it (the one a family has; GPT-NeoX and Falcon
        share a layout and differ there).
    families : str
        Which families use it (for the docs and errors).

    Notes
    -----
    Each projection is a layer of a type in :data:`adapters.targets.LINEAR_VIEWS`
    (``nn.Linear`` and its subclasses, GPT-2's ``Conv1D``), read through its ``out x in`` view
    (:func:`adapters.targets.as_linear`). A neuron holds ``stacked`` rows of each input
    projection (and their bias entries) and one column of the output projection; the output
    projection's bias is not a neuron's.
    """

    name: str
    inputs: tuple
    output: str
    stacked: int = 1
    width_keys: tuple = ("intermediate_size",)
    families: str = ""

    @property
    def projections(self) -> tuple:
        """The input projections, then the output projection (paths below the unit's module)."""
        return (*self.inputs, self.output)

    def holds(self, module: nn.Module, /) -> bool:
        """Whether ``module`` holds this layout: every projection a plain linear layer, the
        inputs ``stacked * N`` rows for an output projection of ``N`` columns."""
        views = tuple(LINEAR_VIEWS)
        try:
            mods = [module.get_submodule(p) for p in self.projections]
        except AttributeError:
            return False
        if not all(isinstance(m, views) for m in mods):
            return False
        width = as_linear(mods[-1]).in_features
        return all(as_linear(m).out_features == self.stacked * width for m in mods[:-1])

    def width(self, module: nn.Module, /) -> int:
        """``N``, the neurons of the MLP that ``module`` holds."""
        return as_linear(module.get_submodule(self.output)).in_features

    def per_neuron(self, module: nn.Module, /) -> int:
        """Parameters of one neuron: ``stacked`` rows (and bias entries) of each input
        projection and a column of the output projection."""
        count = as_linear(module.get_submodule(self.output)).out_features
        for p in self.inputs:
            lin = as_linear(module.get_submodule(p))
            count += self.stacked * (lin.in_features + (lin.bias is not None))
        return count

    def rows(self, neurons: torch.Tensor, width: int, /) -> torch.Tensor:
        """The input projections' rows of ``neurons`` (an MLP of ``width`` neurons), block by block."""
        return torch.cat([neurons + j * width for j in range(self.stacked)])

    def describe(self) -> str:
        """``inputs -> output (families)``, for messages."""
        return f"{' + '.join(self.inputs)} -> {self.output} ({self.families})"


#: A gated MLP, ``down(act(gate(x)) * up(x))``.
GATED = MLPLayout("gated", ("gate_proj", "up_proj"), "down_proj",
                  families="Llama, Mistral, Qwen2/3, Gemma 1-3 and their kin")
#: The attribute names of a gated MLP: a module holding all three is taken for one (Llama,
#: Mistral, Qwen2/3, Gemma 1-3, ...; :func:`mark_feature_major` reads it).
GATED_MLP = GATED.projections

#: Every MLP layout with a structured unit, in the order they are tried.
MLP_LAYOUTS = (
    GATED,
    MLPLayout("fused gated", ("gate_up_proj",), "down_proj", stacked=2, families="Phi-3"),
    MLPLayout("fc", ("fc1",), "fc2", width_keys=("ffn_dim",), families="OPT"),
    MLPLayout("h_to_4h", ("dense_h_to_4h",), "dense_4h_to_h", width_keys=("intermediate_size", "ffn_hidden_size"),
              families="GPT-NeoX, Falcon"),
    MLPLayout("conv1d", ("c_fc",), "c_proj", width_keys=("n_inner",), families="GPT-2"),
    MLPLayout("intermediate-output", ("intermediate.dense",), "output.dense", families="BERT, RoBERTa"),
)

#: Final names of MLP matrices: a target of one of these names outside every MLP that
#: :func:`find_mlps` finds is an MLP of a layout with no unit (routed experts, a partial or
#: unknown layout such as ``w1``/``w2``/``w3``). GPT-2's ``c_proj`` and BERT's ``dense`` are
#: not listed: attention projections have those names too.
MLP_MATRIX_NAMES = ("gate_proj", "up_proj", "down_proj", "gate_up_proj", "fc1", "fc2", "c_fc", "dense_h_to_4h",
                    "dense_4h_to_h", "w1", "w2", "w3")


def mlp_layout(module: nn.Module, /) -> MLPLayout | None:
    """The :class:`MLPLayout` that ``module`` holds (the first of :data:`MLP_LAYOUTS`), or None."""
    return next((lay for lay in MLP_LAYOUTS if lay.holds(module)), None)


def find_mlps(model: nn.Module, /) -> dict[str, MLPLayout]:
    """Every MLP of ``model`` with a structured unit: ``{name of the module holding it: layout}``.

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    dict
        In model order; the name is the MLP module's (``model.layers.0.mlp``), or the layer's
        where the projections are the layer's own children or sit in several of them (OPT:
        ``model.decoder.layers.0``; BERT: ``bert.encoder.layer.0``). Routed experts
        (:class:`adapters.experts.ExpertLinears`) are left out: they have no unit.

    Examples
    --------
    >>> mlp = torch.nn.Module()
    >>> mlp.fc1, mlp.fc2 = torch.nn.Linear(4, 8), torch.nn.Linear(8, 4)
    >>> {name: lay.name for name, lay in find_mlps(torch.nn.ModuleDict({"block": mlp})).items()}
    {'block': 'fc'}
    """
    experts = [name for name, mod in model.named_modules() if isinstance(mod, ExpertLinears)]
    found = {}
    for name, mod in model.named_modules():
        if any(name.startswith(e + ".") for e in experts):
            continue
        layout = mlp_layout(mod)
        if layout is not None:
            found[name] = layout
    return found


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
