"""One versioned dataclass per compression method, with a JSON round trip.

In the style of torchao's ``quantize_(model, config)`` and PEFT's configs: a config says *what*
to do (method, targets, budget, calibration), is validated when it is built, and is saved with
the checkpoint. Which code runs is decided by the config's type (:mod:`adapters.methods`).

>>> from adapters.configs import InterpolativeConfig, config_from_dict
>>> cfg = InterpolativeConfig(reduction=0.2, exclude=("down",))
>>> config_from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import ClassVar

from curlinalg.metric import SELECTORS

from .calibration import TOKEN_WEIGHTINGS

__all__ = [
    "CONFIGS",
    "CURConfig",
    "ActivationConfig",
    "CURingConfig",
    "CompressionConfig",
    "FIELD_CHOICES",
    "InterpolativeConfig",
    "REFIT_DEFAULT",
    "REFIT_OFF",
    "SVDConfig",
    "StructuredConfig",
    "config_from_dict",
    "config_from_options",
]

#: Every linear layer of the blocks (:data:`adapters.targets.ALL_LINEAR`), in every family.
DEFAULT_TARGETS = "all-linear"

_ERR_UNKNOWN = (
    "unknown option(s) {names} for {cls}; its options are {known}. Pick the config of the method "
    "you mean (InterpolativeConfig, CURConfig, CURingConfig, SVDConfig, StructuredConfig) or drop them"
)


def _tuple(value):
    if value is None or isinstance(value, str):
        return value
    return tuple(value)


@dataclass(frozen=True)
class CompressionConfig:
    """What every method shares: which layers, and the calibration draw.

    Attributes
    ----------
    targets : str or tuple of str, default "all-linear"
        Which linears (:func:`adapters.targets.find_targets`): ``"all-linear"`` (every linear
        layer of the blocks, including ``Conv1D``, fused projections and each routed expert's
        matrices), short names ``q k v o gate up down``, final name parts (``"fc1"``), full
        dotted names, or one string used as a regular expression on the full dotted name. A
        pattern that matches nothing is an error.
    exclude : tuple of str
        Names, final name parts or a regular expression (as ``targets``) to leave dense.
    layers : tuple of int, optional
        Decoder-layer indices (default: all).
    overrides : dict
        Per-module rank (int) or kept fraction of the parameters (float in (0, 1)), keyed by
        full dotted name, final name part, or regular expression. Those modules are fixed; the
        budget is allocated over the others.
    nsamples, seqlen, batch_size, seed : int
        Calibration windows drawn from a token stream (``nsamples`` x ``seqlen`` tokens,
        ``batch_size`` per forward pass, ``seed`` of the draw).
    """

    method: ClassVar[str] = ""
    version: ClassVar[int] = 1
    #: Older versions still read: version -> the values of the fields added since, which a
    #: dictionary of that version lacks (what that version did, not today's defaults).
    upgrades: ClassVar[dict] = {}
    #: Whether targets naming less than half of the blocks' linear parameters deserve a warning
    #: (False for a method whose targets are a deliberate subset).
    covers_blocks: ClassVar[bool] = True

    targets: object = DEFAULT_TARGETS
    exclude: tuple = ()
    layers: tuple | None = None
    overrides: dict = field(default_factory=dict)
    nsamples: int = 128
    seqlen: int = 512
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "targets", _tuple(self.targets))
        object.__setattr__(self, "exclude", _tuple(self.exclude) or ())
        object.__setattr__(self, "layers", None if self.layers is None else tuple(int(i) for i in self.layers))
        object.__setattr__(self, "overrides", dict(self.overrides))
        for name in ("nsamples", "seqlen", "batch_size"):
            _positive_int(name, getattr(self, name))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        for key, value in self.overrides.items():
            ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 1) or (
                isinstance(value, float) and 0.0 < value < 1.0
            )
            if not ok:
                raise ValueError(
                    f"overrides[{key!r}] must be a rank (int >= 1) or a kept fraction of the "
                    f"parameters (float in (0, 1)), got {value!r}"
                )

    def to_dict(self) -> dict:
        """JSON-ready dictionary with ``method`` and ``version``."""
        out = {"method": self.method, "version": self.version}
        for key, value in asdict(self).items():
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict, /):
        """Rebuild from :meth:`to_dict` output (``method`` and ``version`` are checked)."""
        data = dict(data)
        method, version = data.pop("method", cls.method), data.pop("version", cls.version)
        if method != cls.method:
            raise ValueError(f"{cls.__name__} reads method {cls.method!r}, got {method!r}; use config_from_dict")
        if version != cls.version:
            if version not in cls.upgrades:
                raise ValueError(
                    f"{cls.__name__} version {version!r} is not supported (this library writes "
                    f"version {cls.version} and reads {sorted({cls.version, *cls.upgrades})}); re-save the "
                    "config with this version of adapters"
                )
            data = cls.upgrades[version] | data
        return cls.with_options(**data)

    @classmethod
    def with_options(cls, base=None, /, **options):
        """Build (or update ``base``) from keyword options, naming any unknown one."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(_ERR_UNKNOWN.format(names=unknown, cls=cls.__name__, known=sorted(known)))
        return cls(**options) if base is None else replace(base, **options)


def _positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class BudgetConfig(CompressionConfig):
    """A global parameter budget, allocated over the targets by error curves.

    Attributes
    ----------
    reduction : float, optional
        Fraction of the model's parameters to remove; ``target_params = floor((1 - reduction)
        * params)``. Default 0.1 when neither ``target_params`` nor ``rank`` is given.
    target_params : int, optional
        Parameter budget of the whole model.
    rank : int, optional
        One rank for every matrix (no allocation).
    ridge : float
        Relative shift of the input Gram ``X^T D X`` before its Cholesky factorisation.
    token_weighting : {"norm", "clip", "none"}
        Token weights ``D`` (:func:`adapters.calibration.token_weights`).
    max_rank_fraction : float, default 1.0
        Largest allocated rank, as a fraction of the form's break-even rank, at which a matrix
        is factored; the allocator keeps a matrix dense rather than give it a higher rank, and
        takes the budget from the others. A factored layer near its break-even rank costs
        about the dense layer's multiply-adds, spread over two smaller GEMMs (and, for the
        interpolative form, a scatter of its outputs), so it runs slower than the dense one.
        In (0, 1]; 1.0 allows every rank below break-even. Measured on SmolLM2-135M at -20%
        (benchmarks/results/inference_cpu_max_rank_fraction.json): 0.5 gave no clear speed
        gain and a worse perplexity, so it is off by default.
    rank_multiple : int, default 1
        Allocated ranks are multiples of this (8 or 16 suit vector units and GEMM tiles); a
        matrix whose allowed ranks hold no multiple stays dense. A single GEMM with an inner
        dimension that is a multiple of 8 ran up to 1.7x faster on AVX2, but on SmolLM2-135M
        at -20% ``rank_multiple=8`` measured within the noise of the default
        (benchmarks/results/inference_cpu.json), so it is off by default.

    Notes
    -----
    ``max_rank_fraction`` and ``rank_multiple`` restrict the ranks the allocator chooses from;
    ranks fixed by ``rank=`` or ``overrides`` are taken as given.
    """

    reduction: float | None = None
    target_params: int | None = None
    rank: int | None = None
    ridge: float = 1e-6
    token_weighting: str = "norm"
    max_rank_fraction: float = 1.0
    rank_multiple: int = 1

    def __post_init__(self):
        super().__post_init__()
        if self.reduction is not None and not 0.0 < self.reduction < 1.0:
            raise ValueError(f"reduction must lie in (0, 1), got {self.reduction!r}; e.g. reduction=0.1 removes 10%")
        if self.reduction is not None and self.target_params is not None:
            raise ValueError("pass reduction= or target_params=, not both")
        if self.rank is not None:
            _positive_int("rank", self.rank)
            if self.reduction is not None or self.target_params is not None:
                raise ValueError("rank= fixes every rank, so it cannot be combined with reduction=/target_params=")
        if not (isinstance(self.ridge, (int, float)) and math.isfinite(self.ridge) and self.ridge >= 0):
            raise ValueError(f"ridge must be a finite float >= 0, got {self.ridge!r}")
        if self.token_weighting not in TOKEN_WEIGHTINGS:
            raise ValueError(f"token_weighting must be one of {TOKEN_WEIGHTINGS}, got {self.token_weighting!r}")
        f = self.max_rank_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 < f <= 1.0:
            raise ValueError(
                f"max_rank_fraction must be a float in (0, 1] (the largest factored rank over the "
                f"break-even rank), got {f!r}; 1.0 factors at any rank"
            )
        object.__setattr__(self, "max_rank_fraction", float(f))
        _positive_int("rank_multiple", self.rank_multiple)

    def target(self, params_before: int, /) -> int | None:
        """The parameter budget for a model of ``params_before`` parameters (None: fixed rank)."""
        if self.rank is not None:
            return None
        if self.target_params is not None:
            return int(self.target_params)
        return math.floor((1.0 - (0.1 if self.reduction is None else self.reduction)) * params_before)


#: The values of the refit options that change nothing (what version 1 did).
REFIT_OFF = {"mix": 0.0, "refit_ridge": 0.0, "passes": 1}

_ERR_REFIT_TYPE = "{name} must be {what}, got {value!r} of type {kind}"
_ERR_REFIT_ALONE = (
    "{given} only acts on the sequential refit, and sequential=False; pass sequential=True to refit "
    "each module on the compressed model's inputs, or drop {names}"
)


def _real(name, value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(_ERR_REFIT_TYPE.format(name=name, what=what, value=value, kind=type(value).__name__))
    return float(value)


@dataclass(frozen=True)
class ActivationConfig(BudgetConfig):
    r"""Activation-aware selection: what the interpolative and C U R forms share.

    Attributes
    ----------
    selector : {"deim", "qdeim", "maxvol"}
        The curlinalg selector of the rows (and columns).
    sequential : bool
        Calibrate each layer on the outputs of the compressed layers before it (inputs
        ``x_c``) and refit each module there, against the target set by ``mix``.
    mix : float in [0, 1], default 0 (0.75 in :class:`InterpolativeConfig`)
        With ``sequential``: weight :math:`\alpha` of the compressed-input target in
        :math:`\alpha W x_c + (1 - \alpha) W x_d` (PIFA's "M" refit uses about 0.75). 0 fits the
        dense outputs ``W x_d`` alone (version 1's sequential fit); 1 fits ``W`` in the metric
        of the compressed inputs' Gram, as the non-sequential fit does with the dense one.
    refit_ridge : float >= 0, default 0 (1e-2 in :class:`InterpolativeConfig`)
        With ``sequential``: relative weight :math:`\lambda / \mathrm{mean}(\mathrm{diag}\,H_c)`
        of a Tikhonov term :math:`\lambda\|W' - W\|_F^2` pulling each refit toward the dense
        ``W`` (large values tend to the plain truncated SVD of ``W``). Added to ``ridge``, the
        numerical shift of the Gram, for the refit's factor.
    passes : int >= 1, default 1
        With ``sequential``: sweeps over the model. Pass ``p > 1`` runs the compressed path
        through the model as pass ``p - 1`` left it and refits every module from its dense ``W``
        at the same rank.

    Notes
    -----
    Version 2 added ``mix``, ``refit_ridge`` and ``passes``; a version-1 dictionary reads with
    :data:`REFIT_OFF`. Without ``sequential`` the refit options must keep their off values
    (:data:`REFIT_OFF`) or their defaults: any other value would be ignored, so it raises;
    defaults are then set to their off values, so that the config says what runs. The
    formulas are in :func:`curlinalg.metric.mixed_cross`.

    References
    ----------
    Zhao et al. (2025), "Pivoting Factorization", arXiv 2501.19090 (the "M" refit).
    """

    version: ClassVar[int] = 2
    upgrades: ClassVar[dict] = {1: REFIT_OFF}

    selector: str = "deim"
    sequential: bool = False
    mix: float = 0.0
    refit_ridge: float = 0.0
    passes: int = 1

    def __post_init__(self):
        super().__post_init__()
        if self.selector not in SELECTORS:
            raise ValueError(f"selector must be one of {SELECTORS}, got {self.selector!r}")
        if not isinstance(self.sequential, bool):
            raise TypeError(f"sequential must be a bool, got {self.sequential!r}")
        mix = _real("mix", self.mix, "a real number in [0, 1]")
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix must lie in [0, 1] (the weight of the target W x_c), got {self.mix!r}; "
                             "PIFA uses about 0.75")
        ridge = _real("refit_ridge", self.refit_ridge, "a finite real number >= 0")
        if not (math.isfinite(ridge) and ridge >= 0):
            raise ValueError(f"refit_ridge must be a finite real number >= 0, got {self.refit_ridge!r}; e.g. 1e-2")
        if isinstance(self.passes, bool) or not isinstance(self.passes, int):
            raise TypeError(_ERR_REFIT_TYPE.format(name="passes", what="an int >= 1", value=self.passes,
                                                   kind=type(self.passes).__name__))
        if self.passes < 1:
            raise ValueError(f"passes must be an int >= 1 (sweeps of the sequential refit), got {self.passes!r}")
        object.__setattr__(self, "mix", mix)
        object.__setattr__(self, "refit_ridge", ridge)
        if not self.sequential:
            defaults = {f.name: f.default for f in fields(self)}
            stray = [n for n, off in REFIT_OFF.items() if getattr(self, n) not in (off, defaults[n])]
            if stray:
                raise ValueError(_ERR_REFIT_ALONE.format(
                    given=", ".join(f"{n}={getattr(self, n)!r}" for n in stray), names=stray))
            for name, off in REFIT_OFF.items():  # defaults that do nothing read as off in reports
                object.__setattr__(self, name, off)


#: The refit :class:`InterpolativeConfig` runs by default since its version 3: PIFA's "M" with
#: the values measured best on SmolLM2-135M (docs/benchmarks.md, section 10, item 4).
REFIT_DEFAULT = {"sequential": True, "mix": 0.75, "refit_ridge": 1e-2, "passes": 1}


@dataclass(frozen=True)
class InterpolativeConfig(ActivationConfig):
    """The default: activation-aware, stored as pivot rows plus interpolation coefficients.

    Each weight ``W`` becomes the interpolative form of ``M = B_r L^{-1}`` (``B = W L``,
    ``L L^T`` the token-weighted input Gram): ``r (m + n) - r^2`` parameters
    (:class:`adapters.layer.InterpolativeLinear`; :func:`curlinalg.interpolative` with
    ``skeleton="truncation"`` in the metric of :mod:`curlinalg.metric`).

    The sequential refit is on by default (:data:`REFIT_DEFAULT`: ``sequential=True,
    mix=0.75, refit_ridge=1e-2, passes=1``, PIFA's "M"): each module is fitted again, layer by
    layer, on the inputs the compressed layers before it produce, against the mixed target
    ``0.75 W x_c + 0.25 W x_d``. On SmolLM2-135M at -20% (32 x 512 tokens of the mixed
    calibration set) it gave WikiText-2 perplexity 51.64 against 67.45 without it, and 71.14
    against 92.23 on Shakespeare (``benchmarks/results/adapters_quality_issue14_mix.json``), for
    2.7x the compression time (371 s against 136 s at -10% on 2 CPU cores,
    ``benchmarks/results/compress_cpu_issue14_refit.json``). ``sequential=False`` is the one-pass fit on the dense
    model's statistics (what :func:`adapters.plan` measures the budget on).

    Notes
    -----
    Version 3 turned the refit on by default; a version-1 or version-2 dictionary reads
    with the refit off (the defaults of those versions) for the fields it does not hold.
    """

    method: ClassVar[str] = "interpolative"
    version: ClassVar[int] = 3
    upgrades: ClassVar[dict] = {1: {"sequential": False, **REFIT_OFF}, 2: {"sequential": False, **REFIT_OFF}}

    sequential: bool = REFIT_DEFAULT["sequential"]
    mix: float = REFIT_DEFAULT["mix"]
    refit_ridge: float = REFIT_DEFAULT["refit_ridge"]
    passes: int = REFIT_DEFAULT["passes"]


ALLOCATIONS = ("svd", "cur")


@dataclass(frozen=True)
class CURConfig(ActivationConfig):
    """Activation-aware C U R (:class:`adapters.layer.CURLinear`), the default before.

    ``R`` are rows of ``W``, ``C`` columns of ``W L``, the core fitted to the outputs
    (:func:`curlinalg.weighted_cur`); ``r (m + n) + r^2`` parameters.

    Attributes
    ----------
    sequential : bool
        Default True (better for this form on SmolLM2-135M).
    allocation : {"svd", "cur"}
        Error curves the ranks are allocated on: the whitened SVD tail (a lower bound), or the
        measured error of this CUR at every rank (:func:`curlinalg.cur_error_curve`).
    """

    method: ClassVar[str] = "cur"
    sequential: bool = True
    allocation: str = "svd"

    def __post_init__(self):
        super().__post_init__()
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")


@dataclass(frozen=True)
class CURingConfig(CompressionConfig):
    """The CURing reproduction (arXiv 2501.04211): q/k/gate of the most redundant layers.

    Attributes
    ----------
    rank : int, optional
        Fixed rank; default ``min(r*, max_rank)`` with ``r*`` the break-even rank.
    max_rank : int
        CURing's rank cap (256).
    n_layers : int
        Layers of smallest angular distance to compress (10); ``layers=`` overrides.
    """

    method: ClassVar[str] = "curing"
    covers_blocks: ClassVar[bool] = False
    targets: object = ("q", "k", "gate")
    rank: int | None = None
    max_rank: int = 256
    n_layers: int = 10

    def __post_init__(self):
        super().__post_init__()
        if self.rank is not None:
            _positive_int("rank", self.rank)
        _positive_int("max_rank", self.max_rank)
        _positive_int("n_layers", self.n_layers)


SVD_KINDS = ("plain", "scaled", "whitened")


@dataclass(frozen=True)
class SVDConfig(BudgetConfig):
    """Truncated-SVD baselines with the same allocator: ``W ~ A B``, ``r (m + n)`` parameters.

    Attributes
    ----------
    kind : {"plain", "scaled", "whitened"}
        SVD of ``W``, of ``W diag(rms(x))`` (ASVD-style), or of ``W L`` (SVD-LLM).
    token_weighting : str
        Default ``"none"``: SVD-LLM's plain covariance.
    """

    method: ClassVar[str] = "svd"
    kind: str = "whitened"
    token_weighting: str = "none"

    def __post_init__(self):
        super().__post_init__()
        if self.kind not in SVD_KINDS:
            raise ValueError(f"kind must be one of {SVD_KINDS}, got {self.kind!r}")


#: What a :class:`StructuredConfig` does with the targets that have no structured unit.
STRUCTURED_MATRICES = ("dense", "interpolative")
#: The kinds of structured unit: MLP neurons, attention value-output dimensions, whole KV heads,
#: attention query-key dimensions.
STRUCTURED_UNITS = ("mlp", "vo", "heads", "qk")
_ERR_UNIT_CLASH = (
    "units={units!r} asks for {a!r} and {b!r} units of the same attentions, and an attention is one unit "
    "({why}). Pass units=('mlp', {a!r}) or units=('mlp', {b!r})"
)
#: Unit kinds that cannot share an attention, and why.
_CLASHES = {
    ("heads", "vo"): "a head is kept whole or cut inside, not both",
    ("heads", "qk"): "a head is kept whole or cut inside, not both",
    ("vo", "qk"): "value-output and query-key units of one attention are not built together yet",
}
#: Where a :class:`StructuredConfig` weighs errors by the loss (:mod:`adapters.sensitivity`):
#: in the allocation of widths and ranks, in the fit of the units.
LOSS_AWARE = ("allocation", "fit")
_ERR_PER_GROUP = (
    "per_group=True chooses per unit between keeping it structured and factoring its matrices, which needs "
    "matrices='interpolative' (the factored option) and uniform=False (each unit decides alone); got "
    "matrices={matrices!r}, uniform={uniform!r}. Pass matrices='interpolative', uniform=False"
)


@dataclass(frozen=True)
class StructuredConfig(ActivationConfig):
    """Structured compression: keep whole MLP neurons (and attention heads or head dimensions),
    refit the output projection.

    Each MLP ``out(act(in(x)))`` is one *unit* (a gated MLP ``down(act(gate(x)) * up(x))``, Phi-3's
    fused ``gate_up_proj``, the plain MLPs of OPT, GPT-NeoX, Falcon, GPT-2 and BERT: the layouts
    of :data:`adapters.layouts.MLP_LAYOUTS`): keeping ``k`` of its ``N`` neurons keeps their
    rows of the input projections (``gate`` and ``up``, ``fc1``, ...) and ``k`` columns of the
    output projection (``down``, ``fc2``, ...), refitted in ridge least squares
    (:func:`curlinalg.output_id.output_id`); the neurons are chosen by column-pivoted QR of the
    whitened activations at the output projection's input, each weighted by the norm of the
    column that reads it. The result is smaller dense matrices: an ordinary MLP of width ``k``. The widths come from one exact-budget allocation over the
    units' error curves (:func:`curlinalg.output_id.output_id_curve`, the exact relative output
    error of the refit at every width), together with the other targets' when ``matrices`` is
    ``"interpolative"``.

    Attributes
    ----------
    matrices : {"dense", "interpolative"}
        The targets that are not in a structured unit (attention's q/k/v/o): left dense, or
        factored in the interpolative form (:class:`InterpolativeConfig`'s fit), with their
        ranks allocated in the same budget as the widths (the hybrid).
    uniform : bool, default True
        One width for every MLP (and one number of KV heads for every ``"heads"`` unit, chosen
        together, among those the family's config validates): the model keeps its family's own
        architecture with a smaller width in its config (``intermediate_size``, OPT's ``ffn_dim``, Falcon's
        ``ffn_hidden_size``, GPT-2's ``n_inner``: a stock checkpoint when nothing else is
        factored). With False each
        MLP gets its own width from the allocation over relative error curves (checkpoints
        record the widths, :mod:`adapters.hf_quantizer`); on SmolLM2-135M at -20% that gave
        perplexity 59.38 against 40.50 uniform (one-pass fits): relative MLP errors leave the
        first and last layers with 535 and 141 of 1536 neurons, and those cost the model most
        (docs/benchmarks.md, section 11).
    width_multiple : int, default 1
        Widths are multiples of this (64 suits GEMM tiles and vector units).
    units : tuple of {"mlp", "vo", "heads", "qk"}, default ("mlp",)
        The structured units: ``"mlp"`` keeps whole neurons of MLPs; ``"vo"`` keeps
        value dimensions of each attention head, KV-group aware (the query heads that share a
        KV head keep the same dimensions of it), and refits ``o_proj`` on them
        (:class:`adapters.layer.ScatteredLinear` and :class:`adapters.layer.GatheredLinear`:
        the attention itself is unchanged). Widths of ``"vo"`` units are per layer.
        ``"heads"`` keeps whole KV groups of an attention (a KV head's rows of ``k_proj`` and
        ``v_proj``, its query heads' rows of ``q_proj`` and their columns of ``o_proj``,
        refitted): plain smaller ``nn.Linear`` layers, so with ``uniform`` one count of KV
        heads for every attention (chosen with the MLP width) is the family's own config with
        smaller ``num_key_value_heads`` and ``num_attention_heads`` (``head_dim`` set).
        ``"qk"`` keeps rotary pairs of query-key dimensions (``i`` with ``i + head_dim/2``) per
        KV group, chosen by the CR approximation of the score matrices
        (:func:`curlinalg.score_cr`), without refit; the other rows of ``q_proj`` and
        ``k_proj`` output zeros (:class:`adapters.layer.ScatteredLinear`): it saves
        parameters, not attention FLOPs. ``"heads"`` cannot be asked with ``"vo"`` or ``"qk"``
        (an attention is one unit), nor ``"vo"`` with ``"qk"`` yet.
    loss_aware : tuple of {"allocation", "fit"}, default ()
        Weigh errors by how much the calibration loss cares about each output
        (:func:`adapters.sensitivity.output_sensitivity`: the diagonal ``D`` of the gradient
        covariance at each target's output, from one backward pass over the calibration
        tokens, about three forward passes of cost). ``"allocation"``: the allocator
        weighs each relative curve ``||E L||_F^2 / ||W L||_F^2`` by the predicted loss
        scale ``||D^{1/2} W L||_F^2``, normalised by its mean over the targets of the same
        kind (the loss ranks one kind along the depth; across kinds its diagonal view
        misleads, see docs/adapters.md). ``"fit"``: each
        structured unit picks its neurons (value dimensions) and refits its output projection
        in that two-sided metric (the refit is row by row, so ``D`` changes which neurons are
        kept, not how a kept set is refitted). Needs a model that returns a loss (a causal LM).
    per_group : bool, default False
        With ``matrices="interpolative"`` and ``uniform=False``: each structured unit may
        instead have its matrices factored (an MLP's ``gate``/``up``/``down`` in the
        interpolative form, say, where a neighbour keeps whole neurons). The allocator holds
        both options of every unit, at most one taken (:func:`curlinalg.allocate_ranks` with
        ``exclusive=``), and chooses by predicted error per parameter saved: the unit's
        relative output error against the sum of its matrices' relative errors (loss-weighted
        with ``loss_aware=("allocation",)``). The plan lists the option taken.
    sequential, mix, refit_ridge
        As :class:`ActivationConfig`, defaults as :class:`InterpolativeConfig` (the refit on
        the compressed model's inputs, against ``0.75 W z_c + 0.25 W z_d``, with a ridge toward
        the dense ``down`` columns). ``passes`` must stay 1.

    Notes
    -----
    MLP units exist for the modules :func:`adapters.layouts.find_mlps` finds (every family of
    docs/adapters.md with a dense MLP); routed experts and an MLP of another layout among the
    targets are refused by name in the plan. ``"vo"`` units exist for attentions with
    ``v_proj``, ``o_proj`` and an integer ``head_dim`` (Llama-style); ``"heads"`` units for
    attentions with ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` as ``nn.Linear``, an integer
    ``head_dim`` and no parameters of their own (gpt-oss's per-head ``sinks`` are refused);
    ``"qk"`` units for those with ``q_proj`` and ``k_proj``, an even ``head_dim``, a full
    rotary embedding of the ``rotate_half`` convention and no per-head norm (Qwen3's and
    Gemma 3's ``q_norm``/``k_norm`` are refused).
    Version 2 added ``loss_aware``, version 3 ``per_group``; older dictionaries read with
    ``loss_aware=()`` and ``per_group=False``.

    References
    ----------
    Martens & Grosse (2015), K-FAC, ICML (the output side of ``loss_aware``). Chee et al. (2022), "Model preserving compression for neural networks", NeurIPS. Lin et
    al. (2025), "MoDeGPT", ICLR, arXiv 2408.09632.
    """

    method: ClassVar[str] = "structured"
    version: ClassVar[int] = 3
    upgrades: ClassVar[dict] = {1: {"loss_aware": (), "per_group": False}, 2: {"per_group": False}}

    sequential: bool = REFIT_DEFAULT["sequential"]
    mix: float = REFIT_DEFAULT["mix"]
    refit_ridge: float = REFIT_DEFAULT["refit_ridge"]
    passes: int = 1
    matrices: str = "dense"
    uniform: bool = True
    width_multiple: int = 1
    units: tuple = ("mlp",)
    loss_aware: tuple = ()
    per_group: bool = False

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "units", (self.units,) if isinstance(self.units, str) else tuple(self.units))
        aware = (self.loss_aware,) if isinstance(self.loss_aware, str) else tuple(self.loss_aware)
        object.__setattr__(self, "loss_aware", aware)
        if not set(aware) <= set(LOSS_AWARE) or len(set(aware)) != len(aware):
            raise ValueError(f"loss_aware must be a tuple of distinct values from {LOSS_AWARE} (or ()), got "
                             f"{self.loss_aware!r}")
        if not self.units or not set(self.units) <= set(STRUCTURED_UNITS) or len(set(self.units)) != len(self.units):
            raise ValueError(f"units must be a non-empty tuple of distinct values from {STRUCTURED_UNITS}, got {self.units!r}")
        for (a, b), why in _CLASHES.items():
            if a in self.units and b in self.units:
                raise ValueError(_ERR_UNIT_CLASH.format(units=self.units, a=a, b=b, why=why))
        if self.matrices not in STRUCTURED_MATRICES:
            raise ValueError(f"matrices must be one of {STRUCTURED_MATRICES}, got {self.matrices!r}")
        if not isinstance(self.uniform, bool):
            raise TypeError(f"uniform must be a bool, got {self.uniform!r}")
        if not isinstance(self.per_group, bool):
            raise TypeError(f"per_group must be a bool, got {self.per_group!r}")
        if self.per_group and (self.matrices != "interpolative" or self.uniform):
            raise ValueError(_ERR_PER_GROUP.format(matrices=self.matrices, uniform=self.uniform))
        _positive_int("width_multiple", self.width_multiple)
        if self.passes != 1:
            raise ValueError(f"passes must be 1 for StructuredConfig (one sequential sweep), got {self.passes!r}")
        if self.rank is not None:
            raise ValueError("StructuredConfig allocates widths from a budget; pass reduction= or target_params=, "
                             "not rank=")


#: ``method`` name -> config class (to read a saved config back).
CONFIGS = {cls.method: cls for cls in (InterpolativeConfig, CURConfig, CURingConfig, SVDConfig, StructuredConfig)}
#: Config fields whose values come from a fixed set: field -> the allowed values (for ``units``,
#: of each entry). What the configs check, and what the command line offers as choices.
FIELD_CHOICES = {
    "selector": SELECTORS,
    "token_weighting": TOKEN_WEIGHTINGS,
    "allocation": ALLOCATIONS,
    "kind": SVD_KINDS,
    "matrices": STRUCTURED_MATRICES,
    "units": STRUCTURED_UNITS,
    "loss_aware": LOSS_AWARE,
}


def config_from_dict(data: dict, /) -> CompressionConfig:
    """The config saved by ``config.to_dict()``, as its own class.

    Raises
    ------
    ValueError
        Unknown method or version, or an option the method does not have.
    """
    method = data.get("method")
    if method not in CONFIGS:
        raise ValueError(f"config method must be one of {tuple(CONFIGS)}, got {method!r}")
    return CONFIGS[method].from_dict(data)


_FORMS = {"interpolative": InterpolativeConfig, "cur": CURConfig}


def config_from_options(*, method: str = "activation", form: str | None = None, **options) -> CompressionConfig:
    """A config from the keyword options of the earlier ``compress(model, method=..., form=...)``.

    ``method="activation"`` with ``form="interpolative"`` (default) or ``"cur"``, or
    ``method="curing"``; ``sequential=None`` means the form's default. Every other option is a
    field of the chosen config.
    """
    if method not in ("activation", "curing"):
        raise ValueError(f"method must be one of ('activation', 'curing'), got {method!r}")
    if method == "curing":
        if form not in (None, "cur"):
            raise ValueError(f"form must be one of {tuple(_FORMS)} (method='curing' builds 'cur'), got {form!r}")
        cls = CURingConfig
    else:
        if form not in (None, *_FORMS):
            raise ValueError(f"form must be one of {tuple(_FORMS)}, got {form!r}")
        cls = _FORMS[form or "interpolative"]
    options = {k: v for k, v in options.items() if not (k in ("sequential", "targets") and v is None)}
    return cls.with_options(**options)
