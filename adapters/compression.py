"""Apply a plan: replace the planned linears by factored layers, in place, all or nothing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ._common import count_parameters
from ._parallel import map_modules
from .calibration import CalibrationError, InputRecorder, accumulate_statistics
from .configs import ActivationConfig, CompressionConfig, InterpolativeConfig, config_from_options
from .hf_quantizer import attach, check_quantization, drop_dequantized_record, is_recorded, rebuild_buffers
from .layouts import mark_feature_major
from .pruned import settle_heads, settle_widths
from .experts import ExpertLinears, close_experts, open_experts
from .methods import Method, Metrics, method_for
from .offload import Placer, check_readable, onloaded, onloaded_block
from .planning import Calibration, Plan, build_plan, dense_lines
from .sensitivity import check_causal_lm, fit_weights, output_sensitivity
from .targets import LeftDense, as_linear, check_uncompressed

__all__ = ["CompressionReport", "ModuleReport", "compress"]

_ERR_HEAL_OFFLOADED = (
    "heal= trains the factored layers by backpropagation through the whole model, which needs "
    "every parameter resident; this model has {count} parameter tensors offloaded by accelerate (on the "
    "meta device). Compress without heal=, save it with adapters.save_compressed(...), and heal "
    "the loaded model (adapters.heal) where it fits"
)


@dataclass
class ModuleReport:
    """What happened to one linear layer.

    Attributes
    ----------
    name : str
        Dotted module name.
    layer : int
        Decoder-layer index.
    shape : tuple of int
        ``(out_features, in_features)``.
    rank : int
    rows, cols : list of int
        Kept output rows and columns. Interpolative form: the pivot rows (``R`` holds those rows
        of the activation-optimal rank-``r`` approximation), ``cols`` empty. C U R form: rows of
        ``W``; columns of ``W`` for CURing, of the activation-weighted ``W L`` otherwise.
    params_before, params_after : int
        Weight (and bias) parameters before and after.
    rel_error : float
        Measured relative activation-weighted error ``||(W - W') L||_F / ||W L||_F`` of the
        stored ``W'`` (``L L^T = X^T D X``, the inputs the module was fitted on: the compressed
        path's, of the last pass, with ``sequential``; CURing: the diagonal scaling).
    seconds : float
        Time of this module's fit (summed over the passes of a sequential refit).
    predicted_error : float or None
        The plan's prediction of ``rel_error``.
    whitening : str or None
        None when the input Gram was factored with the config's ``ridge`` (plus ``refit_ridge``
        in a sequential refit); otherwise how
        :func:`curlinalg.metric.whitening` fell back (a larger shift of the Cholesky factor, or
        the eigendecomposition route), e.g. because the layer saw fewer calibration tokens than
        it has input features.
    unit : str
        ``"linear"``, or ``"mlp"`` for an MLP kept as a structured unit
        (:class:`adapters.planning.ModulePlan`): ``rank`` is then its kept width, ``rows`` the
        kept neurons, ``shape`` ``(neurons, parameters per neuron)``, and ``rel_error`` the
        relative output error of the refitted output projection (``down_proj``, ``fc2``, ...).
        ``"vo"``, ``"heads"``, ``"qk"``: an attention's units (``rank`` as
        :class:`adapters.planning.ModulePlan`); for ``"heads"`` ``rows`` are the kept KV heads
        and ``cols`` the kept columns of ``o_proj``, for ``"qk"`` ``rows`` the kept rows of
        ``k_proj`` and ``rel_error`` that of the score matrices (:func:`curlinalg.score_cr`).
    optimal_error : float or None
        A unit's optimum at its kept width, in the metric of ``rel_error``: the relative error
        of the best rank-``k`` approximation of the whitened output, which no refit through its
        ``k`` kept inner columns beats (:attr:`curlinalg.OutputID.optimal_error`; ``"qk"``:
        of the score matrices at the rank of its kept pairs, :attr:`curlinalg.ScoreCR.lower`).
        None for a matrix.
    optimality_ratio : float or None
        ``rel_error / optimal_error``, at least 1 (:func:`curlinalg.output_id.selection_ratio`,
        1 where both are at rounding level): how far the kept units are from the optimum,
        measured. None for a matrix, and where ``optimal_error`` is 0 but ``rel_error`` is not:
        a width at least the rank of the output (an MLP keeping at least its hidden size in
        neurons) makes the optimum vacuous.
    """

    name: str
    layer: int
    shape: tuple
    rank: int
    rows: list
    cols: list
    params_before: int
    params_after: int
    rel_error: float
    seconds: float
    predicted_error: float | None = None
    whitening: str | None = None
    unit: str = "linear"
    optimal_error: float | None = None
    optimality_ratio: float | None = None


@dataclass
class CompressionReport:
    """Result of :func:`compress`: the plan, with measured errors and times.

    Attributes
    ----------
    method : str
        ``config.method``.
    modules : list of ModuleReport
        The compressed modules.
    params_before, params_after : int
        Parameters of the whole model (tied weights once), measured on the model.
    target_params : int or None
        The budget (None for fixed ranks); ``params_after <= target_params``.
    seconds : float
        Wall time of the call, calibration included.
    layers : list of int
        Decoder layers touched.
    angular_distances : list of float or None
        CURing's per-layer scores, when computed.
    options : dict
        ``config.to_dict()``, the layer ``form``, and when calibration ran
        ``calibration_tokens`` (distinct real tokens: padding left out, a stream position
        covered by overlapping windows counted once) and ``calibration_rows`` (the token rows
        the statistics sum over).
    heal : dict or None
        :meth:`adapters.healing.HealResult.to_dict` of the healing run, when ``heal=`` was given.
    dense : list of dict
        Every 2-D weight of the blocks left dense, with the reason
        (:class:`adapters.targets.LeftDense` as a dict); targets the plan left at rank 0 are
        listed with the reason ``"rank 0 in the plan"``.
    """

    method: str
    modules: list
    params_before: int
    params_after: int
    target_params: int | None
    seconds: float
    layers: list
    angular_distances: list | None = None
    options: dict = field(default_factory=dict)
    heal: dict | None = None
    dense: list = field(default_factory=list)

    @property
    def reduction(self) -> float:
        """Fraction of parameters removed."""
        return 1.0 - self.params_after / self.params_before

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        return asdict(self)

    def summary(self) -> str:
        """A short human-readable table."""
        lines = [
            f"method={self.method}  params {self.params_before:,} -> {self.params_after:,} "
            f"(-{100 * self.reduction:.2f}%)"
            + ("" if self.target_params is None else f"  target {self.target_params:,}")
            + f"  time {self.seconds:.1f}s",
            f"{'module':48s} {'shape':>12s} {'rank':>5s} {'rel.err':>8s}",
        ]
        for m in self.modules:
            lines.append(f"{m.name:48s} {m.shape[0]:>5d}x{m.shape[1]:<6d} {m.rank:>5d} {m.rel_error:8.4f}"
                         + ("  *" if m.whitening else ""))
        constants: dict[str, list] = {}
        for m in self.modules:
            if m.optimality_ratio is not None:
                constants.setdefault(m.unit, []).append(m.optimality_ratio)
        if constants:
            lines.append("optimality ratio (rel.err / optimal error), per unit kind: " + "; ".join(
                f"{u} median {statistics.median(v):.3g}, max {max(v):.3g}" for u, v in sorted(constants.items())))
        fell = [m for m in self.modules if m.whitening]
        if fell:
            asked = f"ridge={self.options.get('ridge')!r}"
            if self.options.get("sequential") and self.options.get("refit_ridge"):
                asked += f" + refit_ridge={self.options['refit_ridge']!r}"
            lines.append(
                f"* whitening fell back for {len(fell)} module(s): the input Gram could not be factored with "
                f"{asked} (singular, e.g. fewer calibration tokens than input features). The result "
                "is valid; pass more calibration tokens or a larger ridge= to choose the shift yourself:"
            )
            lines.extend(f"  {m.name}: {m.whitening}" for m in fell)
        return "\n".join(lines + dense_lines(LeftDense(**d) for d in self.dense))


def _resolve(config, options) -> tuple[CompressionConfig, Plan | None]:
    if isinstance(config, Plan):
        if options:
            raise ValueError(f"a Plan fixes every option; got {sorted(options)} as well. Edit the plan instead")
        return config.config, config
    if config is None:
        return (config_from_options(**options) if options else InterpolativeConfig()), None
    if not isinstance(config, CompressionConfig):
        raise TypeError(
            f"compress expects a config (e.g. adapters.InterpolativeConfig(...)) or a Plan, got "
            f"{type(config).__name__}"
        )
    return (type(config).with_options(config, **options) if options else config), None


def _swap(model, name, new, swaps):
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    swaps.append((parent, attr, getattr(parent, attr)))
    setattr(parent, attr, new)


class _Applier:
    """Fits the planned modules layer by layer, reading kept statistics or recording them."""

    def __init__(self, model, plan: Plan, method: Method, calib: Calibration, metrics: Metrics, progress,
                 placer: Placer):
        self.model, self.plan, self.method, self.calib, self.metrics = model, plan, method, calib, metrics
        self.placer = placer
        self.config = plan.config
        self.progress = progress
        self.swaps: list = []
        self.reports: dict[str, ModuleReport] = {}
        self.planned = {m.name: m for m in plan.modules if m.rank > 0}
        self.sensitivity = self._sensitivity()
        self.sequential = isinstance(self.config, ActivationConfig) and self.config.sequential
        # A refit's factor carries its ridge toward W on top of the numerical shift; its
        # statistics are recorded afresh, so no factor is shared with the plan's.
        self.fit_metrics = (Metrics(self.config.ridge + self.config.refit_ridge)
                            if self.sequential and self.config.refit_ridge else metrics)
        self.routed = {f"{n}.{sub}" for n, mod in model.named_modules() if isinstance(mod, ExpertLinears)
                       for sub, _ in mod.named_modules() if sub}

    def _sensitivity(self) -> dict | None:
        """The plan's output sensitivities, or, for a plan that carries none (edited, or read
        back from JSON), new ones when the config's ``loss_aware`` asks for loss-aware fits."""
        if "fit" not in getattr(self.config, "loss_aware", ()):
            return None
        if self.plan._sensitivity:
            return self.plan._sensitivity
        check_causal_lm(self.model)
        anchors = {n: self.model.get_submodule(self.method.for_unit(m.unit).anchor(self.model, n))
                   for n, m in self.planned.items() if m.unit != "linear"}
        return output_sensitivity(self.model, self.calib.batches_ready(), anchors, progress=self.progress)

    def fit_many(self, todo: list) -> None:
        """Fit ``(name, stats)`` pairs side by side (:mod:`adapters._parallel`), then swap them in order."""
        for name, stats in todo:
            if stats is None:
                raise CalibrationError(
                    f"{name} received no calibration token in this pass (an expert the compressed layers before "
                    "it no longer route to), so it cannot be fitted; pass more calibration data, or "
                    "sequential=False to fit on the dense model's statistics"
                )
        workers = self.calib.workers
        metrics = self.fit_metrics
        if self.method.needs_gram:  # one factor per shared input, made before the matrices use it
            # (a structured unit's fit factors its own statistics: a factor here would go unused)
            metrics.prepare([s for n, s in todo if self.planned[n].unit == "linear"], workers=workers)

        def one(item):
            name, stats = item
            t = time.perf_counter()
            mp = self.planned[name]
            if mp.unit != "linear":  # its fit reads the unit's children, one at a time
                res = self.method.for_unit(mp.unit).fit_unit(
                    self.config, self.model, name, stats, metrics, mp.rank,
                    outputs=fit_weights(self.config, self.sensitivity, name, mp.unit))
                return None, res, time.perf_counter() - t
            with onloaded(self.model, name) as held:  # one offloaded module's weights at a time
                lin = as_linear(held)
                res = self.method.for_unit(mp.unit).fit(self.config, lin, stats, metrics, mp.rank)
            return lin, res, time.perf_counter() - t

        for (name, stats), (lin, res, seconds) in zip(todo, map_modules(one, todo, workers=workers)):
            mp = self.planned[name]
            new = {name: res.module} if res.replaces is None else {f"{name}.{a}": m for a, m in res.replaces.items()}
            before = mp.params_before if lin is None else lin.weight.numel() + (0 if lin.bias is None else lin.bias.numel())
            earlier = self.reports.pop(name, None)  # a refit pass replaces the previous pass's fit
            self.reports[name] = ModuleReport(
                name=name, layer=mp.layer, shape=mp.shape if lin is None else tuple(lin.weight.shape), rank=mp.rank,
                rows=res.rows, cols=res.cols, params_before=before,
                params_after=sum(p.numel() for m in new.values() for p in m.parameters()),
                rel_error=res.rel_error, seconds=seconds + (earlier.seconds if earlier else 0.0),
                predicted_error=mp.predicted_error, whitening=metrics.fallback(stats), unit=mp.unit,
                optimal_error=res.optimal_error, optimality_ratio=res.optimality_ratio,
            )
            for full, module in new.items():
                _swap(self.model, full, self.placer.place(full, module), self.swaps)

    @torch.no_grad()
    def run(self) -> None:
        mods_of: dict[int, dict] = {}
        for name, mp in self.planned.items():  # a unit is recorded at its anchor (an MLP's output projection)
            anchor = self.method.for_unit(mp.unit).anchor(self.model, name)
            mods_of.setdefault(mp.layer, {})[name] = self.model.get_submodule(anchor)
        kept = self.plan._kept
        todo = [i for i, mods in mods_of.items() if not all(n in kept for n in mods)]
        last = max(todo) if todo else -1
        if todo:
            self._record_and_fit(mods_of, last)
        for i in tqdm([i for i in sorted(mods_of) if i > last], desc="fit", disable=not self.progress, leave=False):
            self.fit_many([(name, kept[name]) for name in mods_of[i]])

    def _record_and_fit(self, mods_of, last) -> None:
        """Layers ``0..last`` in order, ``passes`` times when sequential (see :meth:`_sweep`)."""
        for p in range(self.config.passes if self.sequential else 1):
            self._sweep(mods_of, last, refit=p > 0)

    def _sweep(self, mods_of, last, *, refit: bool) -> None:
        """One pass over layers ``0..last``; a layer is swapped only after its inputs were recorded.

        The compressed path runs the model as it stands: layers before ``i`` fitted in this
        pass, layer ``i`` dense in the first pass and as the previous pass left it in the next
        ones (``refit``). There, each batch runs layer ``i`` with its dense modules put back
        (the dense path), then with the previous pass's modules, and every module is fitted
        again from its dense ``W`` at the planned rank.
        """
        sequential = self.sequential
        weighting = getattr(self.config, "token_weighting", "none")
        kept = self.plan._kept
        runner = self.calib.runner
        h_d = h_c = runner.hidden
        for i in tqdm(range(last + 1), desc="compress" if not refit else "refit", disable=not self.progress,
                      leave=False):
            mods = {n: m for n, m in mods_of.get(i, {}).items() if n not in kept}
            ready = {n: m for n, m in mods_of.get(i, {}).items() if n in kept}
            if not mods:
                diverged = h_c is not h_d
                h_d = runner.run_layer(i, h_d)
                h_c = runner.run_layer(i, h_c) if diverged else h_d
                self.fit_many([(name, kept[name]) for name in ready])
                continue
            live = {n: self.model.get_submodule(n) for n in mods} if refit else mods
            if refit:
                self._install(mods)  # the block holds the dense modules; the previous fits load per forward
            with onloaded_block(self.model, f"{runner.prefix}.{i}"), ExitStack() as stack:
                rec = stack.enter_context(InputRecorder(mods))
                rec_c = stack.enter_context(InputRecorder(live)) if refit else rec
                stats: dict = {}
                out_d = []
                for b, (hd, hc, kw) in enumerate(zip(h_d, h_c, runner.kwargs)):
                    rec.batch, rec.mask = b, runner.masks[b]
                    rec_c.batch, rec_c.mask = b, runner.masks[b]
                    if refit:
                        self._install(mods)
                    y = runner.layers[i](hd, **kw)
                    out_d.append(y[0] if isinstance(y, tuple) else y)
                    xd = rec.take()
                    if sequential and (hc is not hd or refit):
                        if refit:
                            self._install(live)
                        runner.layers[i](hc, **kw)
                        xc = rec_c.take()
                        # A routed expert sees other tokens on the two paths: no paired rows, so
                        # it is fitted on the dense path's inputs alone.
                        accumulate_statistics(stats, {n: x for n, x in xc.items() if n not in self.routed},
                                              reference=xd, weighting=weighting)
                        accumulate_statistics(stats, {n: x for n, x in xd.items() if n in self.routed},
                                              weighting=weighting)
                    else:
                        accumulate_statistics(stats, xd, weighting=weighting, gram=self.method.needs_gram)
                if refit:
                    self._install(mods)  # fit reads, and the placer places after, the dense module
                self.fit_many([(name, kept[name]) for name in ready] + [(name, stats.get(name)) for name in mods])
                for s in {id(s): s for s in stats.values()}.values():
                    self.fit_metrics.drop(s)
                h_c = runner.run_layer(i, h_c) if sequential else out_d
                h_d = out_d

    def _install(self, modules: dict) -> None:
        """Put ``modules`` (by dotted name) into the model, untracked: every name they take was
        swapped once before, and restoring ``self.swaps`` in reverse ends on the dense module."""
        for name, mod in modules.items():
            parent_name, _, attr = name.rpartition(".")
            parent = self.model.get_submodule(parent_name)
            if getattr(parent, attr) is not mod:
                setattr(parent, attr, mod)


def compress(
    model: nn.Module,
    config: CompressionConfig | Plan | None = None,
    /,
    *,
    calibration=None,
    tokenizer=None,
    filter_fn=None,
    progress: bool = True,
    heal: bool | dict = False,
    offload_folder=None,
    workers: int | None = None,
    **options,
):
    """Compress the linear layers of a transformer's blocks, in place: plan (unless given one), then apply.

    Parameters
    ----------
    model : transformers PreTrainedModel
        A decoder-only or encoder-only model (the families of docs/adapters.md, Families);
        modified in place, nothing is copied. Fused 3-D expert parameters are opened into one
        linear layer per expert matrix (:func:`adapters.experts.open_experts`). It may be
        dispatched by accelerate (``device_map=``, CPU or disk offload, several devices): it is
        then compressed layer by layer, each module's weights read onto its execution device,
        and each factored module placed where the dense one lived
        (:class:`adapters.offload.Placer`).
    config : CompressionConfig or Plan, default InterpolativeConfig()
        What to do (:mod:`adapters.configs`), or a :class:`~adapters.planning.Plan` from
        :func:`adapters.plan` (possibly edited) to apply as it is.
    calibration : str, list of str, torch.Tensor, mapping or iterable of batches, optional
        See :func:`adapters.calibration.prepare_calibration` (a mapping with ``input_ids`` and
        ``attention_mask``, as a tokenizer returns with padding, leaves the padding out of the
        statistics). Default: the calibration set
        :data:`adapters.texts.DEFAULT_CALIBRATION_SET` (the bundled mixed-domain set;
        ``load_calibration_set("wikitext", tokenizer=tok).text`` is WikiText-2's alone),
        encoded with ``tokenizer`` or the model's own
        (:func:`adapters.calibration.default_calibration`; raises if none is found).
    tokenizer : transformers tokenizer, optional
        Needed when ``calibration`` is text.
    filter_fn : callable, optional
        ``filter_fn(module, fqn) -> bool``: a further target condition (torchao's ``quantize_``).
    progress : bool, default True
        tqdm progress bars.
    workers : int, optional
        Threads for the per-module factorisations, each single-threaded (:mod:`adapters._parallel`);
        default ``torch.get_num_threads()``. The calibration forward passes use every torch thread
        as before. The result does not depend on it. A model on a GPU or offloaded by
        accelerate is always factored one module at a time.
    heal : bool or dict, default False
        Then run :func:`adapters.healing.heal`: ``True`` for cross-entropy on the calibration
        data, a dict for its options (e.g. ``{"teacher": dense_copy, "steps": 200}``).
    offload_folder : str or os.PathLike, optional
        Where the factors of disk-offloaded modules are written (under ``compressed/``).
        Default: the offload map's own folder (accelerate's ``offload_dir``); needed when the
        offloaded weights are read from the checkpoint's own files.
    **options
        Fields of the config to override, or the earlier keyword interface
        (``method="activation"|"curing"``, ``form="interpolative"|"cur"``, ``reduction=``,
        ...), mapped by :func:`adapters.configs.config_from_options`.

    Returns
    -------
    model : nn.Module
        The same object, with factored layers in place of the planned linears;
        ``model.compression_config`` holds the config (saved with the checkpoint).
    report : CompressionReport

    Raises
    ------
    ValueError
        Bad options; no matching layers, a target pattern that matches nothing, a model that
        already holds compressed layers; infeasible budget; ``heal`` on calibration with an
        ``attention_mask`` and no ``data`` of its own (all before the model is touched).
    TypeError
        ``config`` of an unknown type; float token ids.
    NotImplementedError
        ``heal=`` with parameters offloaded by accelerate (before the model is touched).
    adapters.offload.OffloadError
        A weight on the meta device that no accelerate offload hook holds, or a disk-offloaded
        target with nowhere to write its factors (before the model is touched).
    adapters.calibration.CalibrationError
        NaN/Inf calibration activations, unusable calibration data (ids outside the
        vocabulary, a stream shorter than ``nsamples * seqlen`` tokens; checked before any
        forward pass), or no calibration and no tokenizer for the default.

    Warns
    -----
    AdaptersWarning
        ``targets`` (``"all-linear"`` or a regular expression) reach less than half of the
        parameters of the blocks' 2-D weights (:data:`adapters.planning.MIN_COVERAGE`).

    Notes
    -----
    Ranks come from :func:`curlinalg.allocate_ranks` on relative error curves measured on the
    dense model (:mod:`adapters.methods`), subject to the form's break-even rank; the budget is
    met to within one rank step of one matrix and ``report.params_after`` (counted on the
    model) never exceeds it. Without sequential calibration the dense statistics recorded for
    the curves are reused for the fits: one Gram and one Cholesky factor per shared input
    (q/k/v share theirs); with sequential calibration, routed experts are fitted on the dense
    model's inputs (the two paths route other tokens to them, so no rows pair up). Any
    exception restores every replaced module, fused experts included, before it propagates.
    ``report.dense`` lists every 2-D weight of the blocks left dense and why.
    The factorisations are in docs/adapters.md (Methods). The returned model is the one
    ``save_pretrained`` / ``from_pretrained`` give back, logit for logit in every dtype: the
    non-persistent buffers that loading rebuilds (a rotary ``inv_freq`` that ``model.to(dtype)``
    cast) are rebuilt as loading builds them (:func:`adapters.hf_quantizer.rebuild_buffers`).

    References
    ----------
    CURing (2025), arXiv 2501.04211. Sorensen & Embree (2016), DEIM-CUR. Wang et al. (2024),
    "SVD-LLM", arXiv 2403.07378. Frantar & Alistarh (2023), SparseGPT. Zhao et al. (2025),
    "Pivoting Factorization", arXiv 2501.19090. Cheng, Gimbutas, Martinsson & Rokhlin (2005).

    Examples
    --------
    >>> import adapters                                                       # doctest: +SKIP
    >>> cfg = adapters.InterpolativeConfig(reduction=0.2)                     # doctest: +SKIP
    >>> model, report = adapters.compress(model, cfg, calibration=text, tokenizer=tok)  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    if heal and (heal is True or "data" not in heal) and _masked(calibration):
        raise ValueError(
            "heal= trains on calibration= by default, and this calibration carries an attention_mask, which "
            "healing does not take (it would train on the padding); pass heal={'data': unpadded token ids or "
            "text, ...}, or heal afterwards with adapters.heal"
        )
    config, given_plan = _resolve(config, options)
    check_uncompressed(model)
    check_quantization(model)
    offloaded = sum(p.device.type == "meta" for p in model.parameters())
    if heal and offloaded:
        raise NotImplementedError(_ERR_HEAL_OFFLOADED.format(count=offloaded))
    method = method_for(config)
    metrics = Metrics(getattr(config, "ridge", 0.0))
    calib = Calibration(model, config, calibration, tokenizer, progress, workers)
    placer = Placer(model, offload_folder=offload_folder)
    was_training = model.training
    model.eval()
    applier = None
    opened = []
    try:
        opened = open_experts(model)
        if given_plan is not None:  # after opening: a plan may name single experts
            check_readable(model, names=[m.name for m in given_plan.modules if m.rank > 0],
                           offload_folder=offload_folder)
        keep = not (isinstance(config, ActivationConfig) and config.sequential)
        the_plan = given_plan or build_plan(model, config, calib=calib, metrics=metrics, filter_fn=filter_fn, keep=keep,
                                            placing=True, offload_folder=offload_folder)
        applier = _Applier(model, the_plan, method, calib, metrics, progress, placer)
        applier.run()
        params_after = count_parameters(model)
        if params_after != the_plan.params_after(method):
            raise RuntimeError(
                f"parameter count {params_after:,} differs from the planned {the_plan.params_after(method):,}; "
                "this is a bug, please report it"
            )
    except BaseException:
        for parent, attr, old in reversed(opened + (applier.swaps if applier else [])):
            setattr(parent, attr, old)
        placer.discard()
        raise
    finally:
        model.train(was_training)
    for mod in model.modules():
        if isinstance(mod, ExpertLinears):
            mod.own_storage()
    order = {m.name: k for k, m in enumerate(the_plan.modules)}
    reports = sorted(applier.reports.values(), key=lambda r: order[r.name])
    dense = [asdict(d) for d in the_plan.dense] + [
        asdict(LeftDense(m.name, m.shape, m.params_before, "rank 0 in the plan")) for m in the_plan.modules if m.rank == 0
    ]
    model.compression_config = config
    mark_feature_major(model)  # gated MLPs' gate/up skip their output copy (adapters.layouts)
    settle_widths(model)  # one width for every MLP: the family's own config, a stock architecture
    settle_heads(model)  # one number of KV heads for every attention: likewise
    rebuild_buffers(model)  # e.g. a rotary inv_freq cast by model.to(bf16): as from_pretrained builds it
    if hasattr(model, "config") and any(is_recorded(m) for m in model.modules()):
        attach(model)  # model.save_pretrained(path) writes the compression record
    elif hasattr(model, "config"):
        # A stock architecture (e.g. one count of whole heads, the routed experts left dense): the
        # experts opened for planning go back to the family's fused parameters, which its class
        # loads, and no GGUF record describes another file.
        close_experts(model)
        drop_dequantized_record(model)
    heal_result = _heal(model, heal, calib, config, progress) if heal else None
    options_out = config.to_dict() | {"form": method.form}
    if calib._runner is not None:
        options_out["calibration_tokens"] = calib.batches.tokens
        options_out["calibration_rows"] = calib.batches.rows
    return model, CompressionReport(
        method=config.method, modules=reports, params_before=the_plan.params_before, params_after=params_after,
        target_params=the_plan.target_params, seconds=time.perf_counter() - t0,
        layers=sorted({r.layer for r in reports}), angular_distances=the_plan.angular_distances,
        options=options_out, heal=heal_result, dense=dense,
    )


def _masked(calibration) -> bool:
    """Whether calibration data holds an ``attention_mask`` (a mapping, or a list with one)."""
    items = calibration if isinstance(calibration, (list, tuple)) else [calibration]
    return any(isinstance(b, Mapping) and b.get("attention_mask") is not None for b in items)


def _heal(model, heal, calib, config, progress) -> dict:
    from .healing import heal as run_heal

    opts = {} if heal is True else dict(heal)
    for key, value in (("data", calib.data), ("tokenizer", calib.tokenizer), ("seed", config.seed),
                       ("progress", progress)):
        opts.setdefault(key, value)
    return run_heal(model, **opts).to_dict()
