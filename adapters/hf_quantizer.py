"""Compressed checkpoints through transformers' quantizer registry: ``from_pretrained`` and
``save_pretrained`` handle them once :mod:`adapters` is imported.

A compressed checkpoint is a plain Hugging Face folder (``config.json``, safetensors,
``generation_config.json``, tokenizer files) whose ``config.json`` carries a
``quantization_config`` record, :class:`CompressedCheckpointConfig`:

.. code-block:: json

    "quantization_config": {
      "quant_method": "curlinalg",
      "format_version": 2,
      "modules": {"model.layers.0.mlp.up_proj":
                  {"form": "interpolative", "out_features": 64, "in_features": 32,
                   "rank": 20, "bias": false}},
      "compression": {"method": "interpolative", "version": 1, "reduction": 0.1}
    },
    "transformers_weights": "curlinalg-compressed checkpoint - run import adapters before from_pretrained.safetensors"

Importing :mod:`adapters` registers the record under ``quant_method="curlinalg"`` and
:class:`CompressedQuantizer` with ``transformers.quantizers.register_quantization_config`` and
``register_quantizer``, the extension point out-of-tree methods such as compressed-tensors use.
``AutoModel*.from_pretrained(path)`` then builds the model on the meta device, the quantizer
replaces each recorded ``nn.Linear`` by an empty :class:`~adapters.layer.CURLinear`,
:class:`~adapters.layer.InterpolativeLinear` or :class:`~adapters.layer.LowRankLinear` (still on meta), checks the record against the
safetensors headers, and transformers fills the layers from the files: the dense weights of the
compressed layers are never allocated.  :func:`adapters.compress` attaches the quantizer to the
model it returns (:func:`attach`), so ``model.save_pretrained(path)`` writes the record.

``transformers_weights`` (:data:`WITHOUT_ADAPTERS`) names a weights file that does not exist:
without :mod:`adapters`, transformers would skip the unknown ``quant_method`` with a warning and
give the factored layers' places random weights; with that name it stops before reading any
tensor, with an error whose path says to ``import adapters``. The quantizer forgets the name
when it loads the checkpoint.

>>> import adapters                                                                # doctest: +SKIP
>>> model.save_pretrained("smol-cur")                       # a model from adapters.compress  # doctest: +SKIP
>>> model = AutoModelForCausalLM.from_pretrained("smol-cur")                      # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import nn
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ._common import architecture_twin
from .configs import config_from_dict
from .experts import ExpertLinears, open_experts
from .layer import LAYERS, SAVED_LINEARS, GatheredLinear, InterpolativeLinear, LowRankLinear, ScatteredLinear
from .layouts import mark_feature_major
from .offload import is_offloaded, read_offloaded
from .pruned import KEPT
from .targets import LINEAR_VIEWS, as_linear

#: Module types a compressed layer may replace (``nn.Linear``, transformers' ``Conv1D``).
_SLOTS = tuple(LINEAR_VIEWS)

__all__ = [
    "FORMAT_VERSION",
    "QUANT_METHOD",
    "WITHOUT_ADAPTERS",
    "CheckpointMismatchError",
    "CompressedCheckpointConfig",
    "CompressedQuantizer",
    "architecture_twin",
    "attach",
    "detach",
    "drop_dequantized_record",
    "is_recorded",
    "rebuild_buffers",
]

#: ``quant_method`` of the record in ``config.json``.
QUANT_METHOD = "curlinalg"
#: Version of the record; 1 was the ``cur_compression`` section of ``save_compressed``.
FORMAT_VERSION = 2
_SPEC_KEYS = ("form", "out_features", "in_features", "rank", "bias")
#: Record form -> what builds the layer: the factored layers and the cut ``nn.Linear`` of a
#: structured unit (:mod:`adapters.pruned`; ``rank`` is then the kept width).
RECORDED = {**LAYERS, **KEPT}
#: What a compressed checkpoint's ``config.json`` names as its weights file
#: (``transformers_weights``): a file that does not exist, whose name is the instruction.
#: Without :mod:`adapters`, transformers skips the unknown ``quant_method`` with a warning and
#: fills the factored layers' places with randomly initialised ``nn.Linear`` weights; naming
#: this file makes every ``from_pretrained`` stop instead, before any tensor is read, with
#: ``FileNotFoundError: No such file or directory: <folder>/<this name>``. With :mod:`adapters`
#: imported the quantizer forgets the name before transformers looks for the weights
#: (:func:`forget_weights_name`) and ``model.safetensors`` loads as usual.
WITHOUT_ADAPTERS = "curlinalg-compressed checkpoint - run import adapters before from_pretrained.safetensors"
_RESAVE = "the record in config.json and the weights were not saved together; re-save the model with model.save_pretrained(path)"


class CheckpointMismatchError(ValueError):
    """A checkpoint's record, architecture or tensors disagree with each other."""


def is_recorded(module) -> bool:
    """Whether the checkpoint record lists ``module``: a factored layer (:data:`SAVED_LINEARS`),
    or a linear cut from a dense one that the architecture does not know (``kept_from``,
    :mod:`adapters.pruned`)."""
    return isinstance(module, SAVED_LINEARS) or hasattr(module, "kept_from")


def _spec_of(module) -> dict:
    kept = getattr(module, "kept_from", None)
    if kept is not None:
        lin = as_linear(module)  # a cut Conv1D (GPT-2) is recorded in out x in terms too
        width = lin.out_features if kept.form == "rows" else lin.in_features
        return {"form": kept.form, "out_features": kept.out_features, "in_features": kept.in_features,
                "rank": width, "bias": module.bias is not None}
    return {
        "form": module.form, "out_features": module.out_features, "in_features": module.in_features,
        "rank": module.rank, "bias": module.bias is not None,
    }


@dataclass
class CompressedCheckpointConfig(QuantizationConfigMixin):
    """The ``quantization_config`` record of a compressed checkpoint (a versioned dataclass).

    Attributes
    ----------
    quant_method : str
        Always :data:`QUANT_METHOD` (``"curlinalg"``): the key transformers dispatches on.
    format_version : int
        :data:`FORMAT_VERSION`; another version is refused.
    modules : dict
        ``{dotted module name: {"form", "out_features", "in_features", "rank", "bias"}}`` for
        every compressed layer; ``form`` names the layer class (:data:`adapters.layer.LAYERS`).
    compression : dict, optional
        The compression config (:meth:`adapters.configs.CompressionConfig.to_dict`), restored as
        ``model.compression_config`` when the checkpoint loads.
    experts : list of str
        Fused-experts modules (MoE, 3-D parameters) that compression opened into one linear
        layer per expert matrix (:func:`adapters.experts.open_experts`); loading opens them again
        before it places the compressed layers.

    Raises
    ------
    CheckpointMismatchError
        When built from a record with another ``format_version``, an unknown field, a module
        entry with missing or invalid fields, an unknown ``form``, or a compression config this
        version cannot read; the message names the module and the field.

    Examples
    --------
    >>> rec = CompressedCheckpointConfig(modules={"fc": {"form": "cur", "out_features": 4,
    ...     "in_features": 6, "rank": 2, "bias": False}})
    >>> CompressedCheckpointConfig.from_dict(rec.to_dict()) == rec
    True
    """

    quant_method: str = QUANT_METHOD
    format_version: int = FORMAT_VERSION
    modules: dict = field(default_factory=dict)
    compression: dict | None = None
    experts: list = field(default_factory=list)

    def __post_init__(self):
        if self.quant_method != QUANT_METHOD:
            raise CheckpointMismatchError(
                f"a CompressedCheckpointConfig has quant_method {QUANT_METHOD!r}, got {self.quant_method!r}"
            )
        if self.format_version != FORMAT_VERSION:
            raise CheckpointMismatchError(
                f"quantization_config format_version {self.format_version!r} is not supported: this version "
                f"of adapters reads version {FORMAT_VERSION} (and the version-1 folders of save_compressed "
                "through adapters.load_compressed); upgrade adapters, or re-save the model with this version"
            )
        if not isinstance(self.modules, dict):
            raise CheckpointMismatchError(f"quantization_config 'modules' must map module names to entries, got {self.modules!r}")
        self.modules = {name: _checked_spec(name, spec) for name, spec in self.modules.items()}
        if not isinstance(self.experts, list) or not all(isinstance(n, str) for n in self.experts):
            raise CheckpointMismatchError(
                f"quantization_config 'experts' must be a list of module names, got {self.experts!r}; {_RESAVE}"
            )
        if self.compression is not None:
            try:
                config_from_dict(self.compression)
            except (ValueError, TypeError, KeyError) as exc:
                raise CheckpointMismatchError(
                    f"quantization_config 'compression' cannot be read: {exc}"
                ) from None

    @classmethod
    def from_dict(cls, config_dict, return_unused_kwargs=False, **kwargs):
        """Rebuild from ``config.json``'s ``quantization_config``, naming any unknown field."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config_dict) - known)
        if unknown:
            raise CheckpointMismatchError(
                f"quantization_config has unknown field(s) {unknown} (known: {sorted(known)}); it was "
                f"written by another version of adapters (this one writes format_version {FORMAT_VERSION})"
            )
        return super().from_dict(dict(config_dict), return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def from_model(cls, model: nn.Module, /) -> "CompressedCheckpointConfig":
        """The record of ``model``'s compressed layers and its ``compression_config``."""
        used = getattr(model, "compression_config", None)
        return cls(
            modules={name: _spec_of(mod) for name, mod in model.named_modules() if is_recorded(mod)},
            compression=None if used is None else used.to_dict(),
            experts=[name for name, mod in model.named_modules() if isinstance(mod, ExpertLinears)],
        )

    @classmethod
    def from_legacy(cls, section: dict, /, *, source="config.json") -> "CompressedCheckpointConfig":
        """Read the ``cur_compression`` section (format 1) that ``save_compressed`` wrote before."""
        if section.get("format_version") != 1 or not isinstance(section.get("modules"), dict):
            raise CheckpointMismatchError(
                f"{source}: 'cur_compression' section with format_version {section.get('format_version')!r}, "
                "expected 1 and a 'modules' mapping; the file is damaged or was not written by adapters"
            )
        modules = {}
        for name, spec in section["modules"].items():
            spec = dict(spec)
            spec.setdefault("form", "cur")  # written before the form was recorded: C U R
            modules[name] = spec
        return cls(modules=modules, compression=section.get("config"), experts=list(section.get("experts", [])))


def _checked_spec(name, spec) -> dict:
    if not isinstance(spec, dict):
        raise CheckpointMismatchError(f"{name}: quantization_config entry must be a dict with {list(_SPEC_KEYS)}, got {spec!r}")
    missing = [k for k in _SPEC_KEYS if k not in spec]
    extra = sorted(set(spec) - set(_SPEC_KEYS))
    if missing or extra:
        raise CheckpointMismatchError(
            f"{name}: quantization_config entry has fields {sorted(spec)}, expected {list(_SPEC_KEYS)} "
            f"(missing {missing}, unknown {extra}); {_RESAVE}"
        )
    if spec["form"] not in RECORDED:
        raise CheckpointMismatchError(
            f"{name}: quantization_config records form {spec['form']!r}, which names no layer class; "
            f"expected one of {sorted(RECORDED)} (adapters.hf_quantizer.RECORDED). The checkpoint was written by "
            "another version of adapters or edited"
        )
    for key in ("out_features", "in_features", "rank"):
        if not isinstance(spec[key], int) or isinstance(spec[key], bool) or spec[key] < 1:
            raise CheckpointMismatchError(f"{name}: quantization_config {key} must be a positive int, got {spec[key]!r}; {_RESAVE}")
    if not isinstance(spec["bias"], bool):
        raise CheckpointMismatchError(f"{name}: quantization_config bias must be true or false, got {spec['bias']!r}")
    try:
        RECORDED[spec["form"]]._layout(spec["out_features"], spec["in_features"], spec["rank"])
    except ValueError as exc:
        raise CheckpointMismatchError(
            f"{name}: quantization_config records a {spec['form']} layer of rank {spec['rank']} for a "
            f"{spec['out_features']}x{spec['in_features']} weight: {exc}"
        ) from None
    return dict(spec)


def name_weights_for_adapters(folder, /) -> bool:
    """Write :data:`WITHOUT_ADAPTERS` as ``transformers_weights`` into ``folder/config.json``
    when it holds a compression record; whether it did.

    ``save_pretrained`` drops ``transformers_weights`` from the config it writes (the key is
    read on load only), so the name is added to the file afterwards, in transformers' own format.
    """
    import json
    import os

    path = os.path.join(os.fspath(folder), "config.json")
    if not os.path.isfile(path):
        return False  # not the main process, or a PEFT adapter folder: no config written
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    record = raw.get("quantization_config")
    if not isinstance(record, dict) or record.get("quant_method") != QUANT_METHOD:
        return False
    raw["transformers_weights"] = WITHOUT_ADAPTERS
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    return True


def _save_pretrained(model, save_directory, *args, **kwargs):
    """``model.save_pretrained`` of a compressed model: transformers' own, then
    :func:`name_weights_for_adapters` on the folder written."""
    type(model).save_pretrained(model, save_directory, *args, **kwargs)
    name_weights_for_adapters(save_directory)


def _name_on_save(model: nn.Module, /) -> None:
    """Make ``model.save_pretrained`` write :data:`WITHOUT_ADAPTERS` (and ``push_to_hub``, which
    calls it): a ``functools.partial`` on the instance, which ``copy.deepcopy`` binds to the copy
    and pickle stores by reference (a bound method would not unpickle). A ``save_pretrained``
    already set on the instance (ours, or the user's own) is left alone."""
    import functools

    if "save_pretrained" not in vars(model):
        model.save_pretrained = functools.partial(_save_pretrained, model)


def forget_weights_name(config, /):
    """Undo :func:`name_weights_for_adapters` (a user's own ``transformers_weights`` stays); returns ``config``."""
    if getattr(config, "transformers_weights", None) == WITHOUT_ADAPTERS:
        del config.transformers_weights
    return config


def _locate(model: nn.Module, name: str) -> str | None:
    """``name`` as a module path of ``model``, allowing for a base model loaded from a head's
    checkpoint (``model.layers.0...`` -> ``layers.0...``) and the reverse."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    candidates = [name]
    if prefix and name.startswith(prefix + "."):
        candidates.append(name[len(prefix) + 1:])
    if prefix:
        candidates.append(f"{prefix}.{name}")
    for candidate in candidates:
        try:
            if isinstance(model.get_submodule(candidate), _SLOTS):
                return candidate
        except AttributeError:
            continue
    return None


def _as_model_keys(model: nn.Module, stored: dict[str, tuple] | None) -> dict[str, tuple] | None:
    """Checkpoint tensor names as the model's: transformers renames some on load (Mixtral's
    ``block_sparse_moe`` is ``mlp`` in the model) and back on save; apply the same renamings."""
    if not stored:
        return stored
    try:  # the loader's own mapping (the function PEFT uses too)
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, apply_renamings
    except ImportError:  # pragma: no cover - older transformers: names are stored as they are
        return stored
    renamings = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
    return {apply_renamings(k, renamings): v for k, v in stored.items()} if renamings else stored


def _stored_shapes(checkpoint_files) -> dict[str, tuple] | None:
    """``{tensor name: shape}`` from the safetensors headers (no tensor is read); None if the
    checkpoint is not all safetensors."""
    from safetensors import safe_open

    files = [str(f) for f in checkpoint_files or ()]
    if not files or not all(f.endswith(".safetensors") for f in files):
        return None
    shapes = {}
    for f in files:
        with safe_open(f, framework="pt") as handle:
            for key in handle.keys():
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def _compare(name: str, spec: dict, shell: nn.Module, stored: dict) -> None:
    expected = {f"{name}.{k}": tuple(t.shape) for k, t in shell.state_dict().items()}
    found = {k: v for k, v in stored.items() if k.startswith(name + ".") and "." not in k[len(name) + 1:]}
    if expected == found:
        return
    parts = []
    missing = sorted(set(expected) - set(found))
    if missing:
        parts.append(f"missing {[k[len(name) + 1:] for k in missing]}")
    extra = sorted(set(found) - set(expected))
    if extra:
        parts.append(f"unexpected {[k[len(name) + 1:] for k in extra]}")
    parts += [
        f"{k[len(name) + 1:]} stored {found[k]}, expected {expected[k]}"
        for k in sorted(set(expected) & set(found)) if found[k] != expected[k]
    ]
    raise CheckpointMismatchError(
        f"{name}: the record says a {spec['form']} layer of rank {spec['rank']} for a "
        f"{spec['out_features']}x{spec['in_features']} weight (bias {spec['bias']}), but the weights "
        f"disagree: {'; '.join(parts)}; {_RESAVE}"
    )


def _check_indices(name: str, mod: nn.Module, buffer=None) -> None:
    """Index buffers as loaded: in range, distinct, and (interpolative) rows + rest a split.
    ``buffer(key)`` gives a buffer's value (default the module's own: pass a reader for
    buffers that an offload hook holds)."""
    read = buffer or (lambda key: getattr(mod, key))
    m = mod.out_features
    if isinstance(mod, LowRankLinear):
        return  # no indices
    if isinstance(mod, (ScatteredLinear, GatheredLinear)):
        key, size = ("rows", m) if isinstance(mod, ScatteredLinear) else ("cols", mod.in_features)
        idx = read(key).cpu()
        if bool((idx < 0).any() or (idx >= size).any()) or idx.unique().numel() != idx.numel():
            raise CheckpointMismatchError(
                f"{name}: the stored '{key}' indices {idx.tolist()[:10]} must be {idx.numel()} distinct values "
                f"in [0, {size}); the weights are damaged or were edited, {_RESAVE}"
            )
        return
    if isinstance(mod, InterpolativeLinear):
        rows = read("rows").cpu()
        both = torch.cat([rows, read("rest").cpu()])
        if not torch.equal(torch.sort(both).values, torch.arange(m)):
            raise CheckpointMismatchError(
                f"{name}: the stored 'rows' {rows.tolist()[:10]} and 'rest' indices are not a split of "
                f"range({m}) (each output index exactly once); the weights are damaged or were edited, {_RESAVE}"
            )
        return
    for key, size in (("rows", m), ("cols", mod.in_features)):
        idx = read(key).cpu()
        if bool((idx == -1).all()):
            continue  # built without recorded indices
        if bool((idx < 0).any() or (idx >= size).any()) or idx.unique().numel() != idx.numel():
            raise CheckpointMismatchError(
                f"{name}: the stored '{key}' indices {idx.tolist()[:10]} must be {idx.numel()} distinct "
                f"values in [0, {size}) (or all -1); the weights are damaged or were edited, {_RESAVE}"
            )


@register_quantizer(QUANT_METHOD)
class CompressedQuantizer(HfQuantizer):
    """Builds the compressed layers a :class:`CompressedCheckpointConfig` records, on the meta
    device, before transformers loads the weights; refreshes the record when the model is saved.

    Parameters
    ----------
    quantization_config : CompressedCheckpointConfig
        The record.
    **kwargs
        ``pre_quantized`` (transformers passes it; a legacy folder loaded through
        :func:`adapters.load_compressed` passes the record explicitly and is loaded the same way).

    Notes
    -----
    Before loading, every recorded module must be an ``nn.Linear`` of the recorded shape in the
    architecture, and the safetensors headers must hold exactly the tensors of the recorded
    layer, of the recorded shapes; after loading, the index buffers must be valid.  Any
    disagreement raises :class:`CheckpointMismatchError` naming the module and what differs.
    """

    requires_calibration = False

    # transformers hands the config to these hooks after it reads the record and before it
    # looks for the weights files (5.25: update_attn_implementation; earlier 5.x:
    # update_tp_plan / update_ep_plan): the place to forget WITHOUT_ADAPTERS.
    def update_attn_implementation(self, config):
        return forget_weights_name(super().update_attn_implementation(config))

    def update_tp_plan(self, config):
        return forget_weights_name(config)

    def update_ep_plan(self, config):
        return forget_weights_name(config)

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        stored = _as_model_keys(model, _stored_shapes(checkpoint_files))
        records = self.quantization_config.modules
        try:
            open_experts(model, names=self.quantization_config.experts)
        except ValueError as exc:
            raise CheckpointMismatchError(f"{exc}; {_RESAVE}") from None
        for name, spec in records.items():
            where = _locate(model, name)
            if where is None:
                raise CheckpointMismatchError(
                    f"{name}: the record names a compressed layer there, but {type(model).__name__} has no "
                    "linear layer of that name; the config.json architecture and the record do not match, "
                    f"{_RESAVE}"
                )
            old = as_linear(model.get_submodule(where))  # a Conv1D is read as its transpose
            m, n = spec["out_features"], spec["in_features"]
            if (old.out_features, old.in_features) != (m, n):
                raise CheckpointMismatchError(
                    f"{name}: the record says a {m}x{n} weight, the architecture in config.json builds "
                    f"{old.out_features}x{old.in_features}; {_RESAVE}"
                )
            # a cut layer keeps the architecture's type there (GPT-2's Conv1D); factored layers have their own
            slot = {"slot": type(model.get_submodule(where))} if spec["form"] in KEPT else {}
            shell = RECORDED[spec["form"]].empty(
                m, n, spec["rank"], bias=spec["bias"], dtype=old.weight.dtype, device=old.weight.device, **slot,
            )
            if stored is not None:
                _compare(name, spec, shell, stored)
            parent, _, attr = where.rpartition(".")
            holder = model.get_submodule(parent)
            setattr(holder, attr, shell)
            # transformers re-initialises modules it does not see as loaded; a parent's init may
            # reach for its child's ``weight`` (GPT-2 scales c_proj.weight), which a factored
            # layer does not have. Its own weights come from the checkpoint: skip both.
            shell._is_hf_initialized = True
            holder._is_hf_initialized = True
        if stored is not None:
            recorded = set(records)
            factored_keys = {k.rpartition(".")[0] for k in stored if k.rpartition(".")[2] in ("C", "U", "P")}
            factored_keys |= {k[:-2] for k in stored if k.endswith(".A") and k[:-2] + ".B" in stored}
            factored_keys |= {k[:-5] for k in stored if k.endswith((".rows", ".cols"))}  # index buffers
            unrecorded = sorted(factored_keys - recorded)
            if unrecorded:
                raise CheckpointMismatchError(
                    f"the weights hold factored layers the record does not list: {unrecorded[:5]}; {_RESAVE}"
                )
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        for name, mod in model.named_modules():
            if not is_recorded(mod):
                continue
            # on meta: offloaded (an accelerate hook holds it, device_map=... / offload_folder=...)
            # or missing from the files
            meta = [k for k, t in mod.state_dict().items() if t.is_meta]
            missing = [k for k in meta if not is_offloaded(model, f"{name}.{k}")]
            if missing:
                held = sorted(set(meta) - set(missing))
                raise CheckpointMismatchError(
                    f"{name}: tensors {missing} were not in the checkpoint (they are on the meta device and no "
                    f"accelerate offload hook holds them{f'; {held} are offloaded' if held else ''}); {_RESAVE}"
                )
            if isinstance(mod, SAVED_LINEARS):
                def read(key, name=name, mod=mod):
                    return read_offloaded(model, f"{name}.{key}") if getattr(mod, key).is_meta else getattr(mod, key)

                _check_indices(name, mod, read)
                if isinstance(mod, InterpolativeLinear):  # derived, not saved: loading left it undefined
                    mod.rebuild_order_from(read("rows"), read("rest"))
        mark_feature_major(model)  # layouts are not stored: the loaded model runs as the saved one
        _realign(model)
        if self.quantization_config.compression is not None:
            model.compression_config = config_from_dict(self.quantization_config.compression)
        model.is_quantized = False  # nothing is quantized: .half() and .float() stay allowed
        _name_on_save(model)
        return model

    def _dequantize(self, model, dtype=None):
        """``model.dequantize()``: the dense model in the family's own layout (:func:`adapters.merge`)."""
        from .merging import densify

        densify(model)
        return model

    def get_state_dict_and_metadata(self, model):
        """Refresh the record from the model's layers just before ``save_pretrained`` writes it."""
        record = CompressedCheckpointConfig.from_model(model)
        self.quantization_config = record
        model.config.quantization_config = record
        return _offloaded_state(model), {}

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_compileable(self) -> bool:
        return True


try:
    register_quantization_config(QUANT_METHOD)(CompressedCheckpointConfig)
except ValueError:  # registered already (this module imported twice, e.g. under importlib.reload)
    pass


#: Byte alignment of PyTorch's CPU allocator (``c10::gAlignment``), which a model built in memory has.
_ALIGNMENT = 64


def _realign(model: nn.Module, /) -> None:
    """Give each CPU tensor that loading left at an unaligned address its own aligned copy.

    Loaded tensors are views into the safetensors file at arbitrary byte offsets; the model that
    was saved held them in the allocator's aligned blocks. Some BLAS kernels split their work by
    alignment: on two threads MKL summed a loaded interpolative layer's ``P z`` (one output row)
    in another order than the saved one's, so the reloaded model's logits differed in the last
    bit. With the same alignment the two run the same kernels.
    """
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type == "cpu" and not tensor.is_meta and tensor.data_ptr() % _ALIGNMENT:
                tensor.data = tensor.data.clone(memory_format=torch.contiguous_format)


def _offloaded_state(model: nn.Module, /) -> dict | None:
    """The state dict with the tensors accelerate offloaded read back (tied ones once), or None
    when nothing is offloaded (transformers then reads the model's own): a model compressed
    past one device (:mod:`adapters.offload`) saves like one in memory."""
    state = model.state_dict(keep_vars=True)
    if not any(t.device.type == "meta" for t in state.values()):
        return None
    read: dict[int, torch.Tensor] = {}
    out = {}
    for key, t in state.items():
        if t.device.type == "meta":
            if id(t) not in read:  # tied parameters are one object
                read[id(t)] = read_offloaded(model, key)
            out[key] = read[id(t)]
        else:
            out[key] = t.detach()
    return out


#: Quantization methods whose weights transformers dequantizes while loading (GGUF files become
#: plain float tensors): their record is provenance only, and a compression record replaces it.
DEQUANTIZED_ON_LOAD = ("gguf",)


def check_quantization(model: nn.Module, /) -> None:
    """Refuse a model whose layers are quantized by another method (before any work).

    A model loaded from GGUF passes when transformers dequantized its weights while loading (on
    CPU it does, for lack of a kernel): its ``gguf`` record then describes the file it came
    from, not its layers, and the compression record replaces it.

    Raises
    ------
    ValueError
        The model carries another quantizer whose layers stay quantized (bitsandbytes, torchao,
        compressed-tensors, ...): its record and ours cannot both describe the checkpoint.
    """
    other = getattr(model, "hf_quantizer", None)
    if other is None or isinstance(other, CompressedQuantizer):
        return
    qc = other.quantization_config
    method = str(getattr(qc.quant_method, "value", qc.quant_method)).lower()
    # transformers' GGUF loader keeps the weights it has a kernel for in GGUF blocks (listed in
    # ``quantized``) and dequantizes the others (or all, with ``dequantize=True``)
    if method in DEQUANTIZED_ON_LOAD and (getattr(qc, "dequantize", False) or not getattr(other, "quantized", None)):
        return
    raise ValueError(
        f"the model's layers are quantized ({method!r}); a CUR-compressed checkpoint cannot also carry "
        "that method's record. Load it with float weights (for a GGUF file: "
        "quantization_config=GgufConfig(dequantize=True)), or call model.dequantize(), before compressing"
    )


def drop_dequantized_record(model: nn.Module, /) -> bool:
    """Remove the record of a quantizer whose weights were dequantized on load; whether one was.

    A model loaded from GGUF keeps transformers' ``gguf`` quantizer, which describes the file it
    came from and makes ``save_pretrained`` refuse. :func:`attach` replaces it by the
    compression record; a structured model that needs no record (one MLP width, nothing
    factored: a stock architecture) drops it instead, so that it saves as the plain checkpoint
    it is.

    Parameters
    ----------
    model : transformers PreTrainedModel

    Returns
    -------
    bool
        Whether a record was removed (False: none, or this method's own).

    Raises
    ------
    ValueError
        The record is of a method whose layers stay quantized (:func:`check_quantization`).
    """
    other = getattr(model, "hf_quantizer", None)
    if other is None or isinstance(other, CompressedQuantizer):
        return False
    check_quantization(model)  # only a dequantized record gets here without raising
    other.remove_quantization_config(model)
    return True


def rebuild_buffers(model: nn.Module, /) -> list[str]:
    """Rebuild the non-persistent floating buffers that loading would build in another dtype.

    Parameters
    ----------
    model : transformers PreTrainedModel

    Returns
    -------
    list of str
        The names of the buffers rebuilt (empty when none differed, or for a model that is not
        a transformers ``PreTrainedModel``).

    Notes
    -----
    ``save_pretrained`` does not write non-persistent buffers: ``from_pretrained`` builds them
    again, in the dtype the model's constructor gives them. The rotary embedding's ``inv_freq``
    is built in float32 whatever the model's dtype, but ``model.to(torch.bfloat16)`` casts it
    too, so a model cast that way and its reloaded copy differ (a bf16 Llama by about 1% of its
    largest logit, a float16 one by 0.1%), a dense one as much as a compressed one. The
    dtypes loading would give are read from the model built again on the meta device (nothing
    is allocated); each buffer that differs is replaced by one of that dtype, filled by the
    model's own ``_init_weights``, as loading fills it. Only buffers of parameter-free modules
    are rebuilt (``_init_weights`` would re-initialise the parameters too), and a buffer that
    ``_init_weights`` does not fill is left as it was.
    """
    named = getattr(model, "named_non_persistent_buffers", None)
    init = getattr(model, "_init_weights", None)
    if named is None or init is None or not hasattr(model, "config"):
        return []
    current = {name: buf for name, buf in named() if buf.is_floating_point() and not buf.is_meta}
    if not current:
        return []
    twin = architecture_twin(model)
    if twin is None:
        return []  # a model transformers cannot build from its config alone: nothing to compare with
    built = dict(twin.named_non_persistent_buffers())
    rebuilt = []
    for name, buf in current.items():
        ref = built.get(name)
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent)
        if ref is None or ref.dtype == buf.dtype or any(True for _ in owner.parameters(recurse=False)):
            continue
        fresh = torch.full(buf.shape, float("nan"), dtype=ref.dtype, device=buf.device)
        owner.register_buffer(attr, fresh, persistent=False)
        init(owner)
        if torch.isnan(getattr(owner, attr)).any():
            owner.register_buffer(attr, buf, persistent=False)
            continue
        rebuilt.append(name)
    return rebuilt


def attach(model: nn.Module, /) -> nn.Module:
    """Make ``model.save_pretrained`` write the compression record (done by :func:`adapters.compress`).

    Parameters
    ----------
    model : transformers PreTrainedModel
        A model holding :class:`~adapters.layer.CURLinear`,
        :class:`~adapters.layer.InterpolativeLinear` or :class:`~adapters.layer.LowRankLinear` layers.

    Returns
    -------
    transformers PreTrainedModel
        The same model, with ``model.hf_quantizer`` (a :class:`CompressedQuantizer`) and
        ``model.config.quantization_config`` (its record) set.

    Raises
    ------
    ValueError
        If the model holds no compressed layer, or is quantized by another method.
    TypeError
        If the model is not a transformers ``PreTrainedModel`` (no ``config``).
    """
    if not hasattr(model, "config"):
        raise TypeError(
            f"attach expects a transformers PreTrainedModel, got {type(model).__name__}; compressed "
            "checkpoints are written through save_pretrained"
        )
    check_quantization(model)
    record = CompressedCheckpointConfig.from_model(model)
    if not record.modules:
        raise ValueError(
            "the model holds no CURLinear, InterpolativeLinear or LowRankLinear modules; compress it first "
            "with adapters.compress(...), or save a dense model with model.save_pretrained(path)"
        )
    quantizer = CompressedQuantizer(record, pre_quantized=True)
    model.hf_quantizer = quantizer
    model.config.quantization_config = record
    model.quantization_method = QUANT_METHOD
    _name_on_save(model)
    return model


def detach(model: nn.Module, /) -> nn.Module:
    """Undo :func:`attach`: ``save_pretrained`` then writes a plain checkpoint (after
    :func:`adapters.merge`).

    Parameters
    ----------
    model : transformers PreTrainedModel

    Returns
    -------
    transformers PreTrainedModel
        The same model, without this method's ``hf_quantizer`` and ``quantization_config``.
    """
    if isinstance(getattr(model, "hf_quantizer", None), CompressedQuantizer):
        model.hf_quantizer.remove_quantization_config(model)
    return model

