"""Save and load CUR-compressed models as a standard folder: config.json + safetensors.

The folder is a normal Hugging Face checkpoint whose ``config.json`` carries one extra section,
``cur_compression``, recording every :class:`~adapters.layer.CURLinear` and
:class:`~adapters.layer.InterpolativeLinear` (name, form, shape, rank, bias) and the
compression config (``config``, see :mod:`adapters.configs`).  No pickles are written or read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from .configs import config_from_dict
from .layer import FACTORED_LINEARS, LAYERS, InterpolativeLinear
from .offload import read_offloaded

__all__ = ["FORMAT_VERSION", "CheckpointMismatchError", "load_compressed", "save_compressed"]

FORMAT_VERSION = 1
SECTION = "cur_compression"
WEIGHTS = "model.safetensors"


class CheckpointMismatchError(ValueError):
    """A checkpoint's config, ranks or tensor shapes disagree with each other."""


def _cur_modules(model: nn.Module) -> dict[str, dict]:
    return {
        name: {
            "out_features": mod.out_features,
            "in_features": mod.in_features,
            "rank": mod.rank,
            "bias": mod.bias is not None,
            "form": mod.form,
        }
        for name, mod in model.named_modules()
        if isinstance(mod, FACTORED_LINEARS)
    }


def _unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied tensors once; tensors offloaded by accelerate are read back."""
    seen = set()
    out = {}
    for key, t in model.state_dict(keep_vars=True).items():
        if t.device.type == "meta":  # dispatched: tied parameters are one object, or one entry of the map
            if id(t) in seen:
                continue
            seen.add(id(t))
            t = read_offloaded(model, key)
        ptr = (t.data_ptr(), t.shape, t.dtype) if t.numel() else (key,)
        if ptr in seen:
            continue
        seen.add(ptr)
        out[key] = t.detach().contiguous()
    return out


def save_compressed(model: nn.Module, path, /, *, tokenizer=None, overwrite: bool = False) -> Path:
    """Write a compressed model (and optionally its tokenizer) to a folder, atomically.

    Parameters
    ----------
    model : transformers PreTrainedModel
        A model holding :class:`~adapters.layer.CURLinear` or
        :class:`~adapters.layer.InterpolativeLinear` modules (from :func:`adapters.compress`).
    path : str or os.PathLike
        Destination folder.
    tokenizer : transformers tokenizer, optional
        Saved alongside with ``save_pretrained``.
    overwrite : bool, default False
        Replace an existing folder.

    Returns
    -------
    pathlib.Path
        The folder written.

    Raises
    ------
    ValueError
        If the model holds no compressed layer (save a dense model with ``save_pretrained``).
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.

    Notes
    -----
    Everything is written to a temporary folder beside ``path`` and renamed into place, so a
    crash never leaves a half-written checkpoint at ``path``.  Tied weights are stored once.
    """
    from safetensors.torch import save_file

    path = Path(path)
    modules = _cur_modules(model)
    if not modules:
        raise ValueError(
            "the model holds no CURLinear or InterpolativeLinear modules; compress it first with adapters.compress(...) "
            "or save a dense model with model.save_pretrained(path)"
        )
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True or choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        config = model.config.to_dict()
        config[SECTION] = {"format_version": FORMAT_VERSION, "library": "adapters", "modules": modules}
        used = getattr(model, "compression_config", None)
        if used is not None:
            config[SECTION]["config"] = used.to_dict()
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
        save_file(_unique_state(model), str(tmp / WEIGHTS), metadata={"format": "pt", SECTION: str(FORMAT_VERSION)})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_compressed(path, /, *, dtype=None, device="cpu"):
    """Rebuild a model written by :func:`save_compressed`.

    Parameters
    ----------
    path : str or os.PathLike
        The folder.
    dtype : torch.dtype, optional
        Cast the model after loading (default: the stored dtype).
    device : str or torch.device, default "cpu"

    Returns
    -------
    transformers PreTrainedModel
        In eval mode, with the compressed modules restored; logits identical to the saved model.
        ``model.compression_config`` holds the saved config (checkpoints written before configs
        were saved have none and load all the same).

    Raises
    ------
    FileNotFoundError
        If ``config.json`` or the weights are missing.
    CheckpointMismatchError
        If config.json has no ``cur_compression`` section or another format version, a recorded
        module does not exist in the architecture, or tensor names or shapes (ranks) disagree
        with the config.
    """
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    cfg_file, w_file = path / "config.json", path / WEIGHTS
    for f in (cfg_file, w_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing; expected a folder written by adapters.save_compressed")
    raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    section = raw.get(SECTION)
    if not isinstance(section, dict) or "modules" not in section:
        raise CheckpointMismatchError(
            f"{cfg_file} has no '{SECTION}' section: this is not a CUR-compressed checkpoint; load "
            "it with AutoModelForCausalLM.from_pretrained(path)"
        )
    if section.get("format_version") != FORMAT_VERSION:
        raise CheckpointMismatchError(
            f"checkpoint format_version {section.get('format_version')!r}, expected {FORMAT_VERSION}; "
            "re-save it with this version of adapters"
        )
    config = AutoConfig.from_pretrained(str(path))
    with safe_open(str(w_file), framework="pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    stored_dtype = next((t.dtype for t in stored.values() if t.is_floating_point()), torch.float32)
    model = AutoModelForCausalLM.from_config(config, dtype=stored_dtype)
    for name, spec in section["modules"].items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            old = None
        if not isinstance(old, nn.Linear):
            raise CheckpointMismatchError(
                f"config records a compressed module {name!r}, but the architecture has no linear "
                "layer there; the config and the compression section do not match"
            )
        m, n, r = int(spec["out_features"]), int(spec["in_features"]), int(spec["rank"])
        if tuple(old.weight.shape) != (m, n):
            raise CheckpointMismatchError(
                f"{name}: config says {m}x{n}, architecture has {tuple(old.weight.shape)}"
            )
        form = spec.get("form", "cur")  # checkpoints written before the form was recorded
        try:
            new = LAYERS[form].empty(m, n, r, bias=bool(spec["bias"]), dtype=stored_dtype)
        except (KeyError, ValueError):
            raise CheckpointMismatchError(
                f"{name}: config records form {form!r} with rank {r} for a {m}x{n} weight; expected "
                f"a form in {sorted(LAYERS)} with 0 < rank (< min(out, in) for 'interpolative')"
            ) from None
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, new)
    model.tie_weights()
    expected = {k: t.shape for k, t in _unique_state(model).items()}
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    wrong = sorted(k for k in set(expected) & set(stored) if tuple(stored[k].shape) != tuple(expected[k]))
    if missing or extra or wrong:
        detail = "; ".join(
            f"{label}: {items[:5]}{' ...' if len(items) > 5 else ''}"
            for label, items in (("missing", missing), ("unexpected", extra), ("shape mismatch", [
                f"{k} stored {tuple(stored[k].shape)} expected {tuple(expected[k])}" for k in wrong
            ]))
            if items
        )
        raise CheckpointMismatchError(
            f"{w_file} does not match its config.json ({detail}); the weights and the "
            f"'{SECTION}' section were not saved together, re-save with adapters.save_compressed"
        )
    missing_tied = set(model.state_dict()) - set(stored)
    result = model.load_state_dict(stored, strict=False)
    if set(result.missing_keys) - missing_tied or result.unexpected_keys:
        raise CheckpointMismatchError(f"could not load {w_file}: {result}")
    model.tie_weights()
    for name, mod in model.named_modules():
        if isinstance(mod, InterpolativeLinear):
            order = torch.sort(torch.cat([mod.rows, mod.rest])).values
            if not torch.equal(order, torch.arange(mod.out_features)):
                raise CheckpointMismatchError(
                    f"{name}: the stored rows and rest indices are not a split of range({mod.out_features}); "
                    f"{w_file} is damaged or was edited, re-save with adapters.save_compressed"
                )
    if "config" in section:
        model.compression_config = config_from_dict(section["config"])
    model.to(device)
    if dtype is not None:
        model.to(dtype)
    return model.eval()
