"""``save_compressed`` and ``load_compressed``: thin wrappers over ``save_pretrained`` and
``from_pretrained``, kept for atomic saves and for the folders written before issue 12.

A compressed checkpoint is an ordinary Hugging Face folder whose ``config.json`` carries a
``quantization_config`` record (:mod:`adapters.hf_quantizer`); after ``import adapters`` every
``AutoModel*.from_pretrained`` loads it.  Folders written by earlier versions (format 1: a
``cur_compression`` section, no ``quantization_config``) load through :func:`load_compressed`,
which reads that section as a record; ``load_compressed(old).save_pretrained(new)`` upgrades
them.  No pickles are written or read.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from .hf_quantizer import (
    FORMAT_VERSION,
    QUANT_METHOD,
    CheckpointMismatchError,
    CompressedCheckpointConfig,
    attach,
    is_recorded,
    name_weights_for_adapters,
)

__all__ = ["FORMAT_VERSION", "CheckpointMismatchError", "load_compressed", "save_compressed"]

#: The section format-1 checkpoints carried in config.json.
SECTION = "cur_compression"


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _new_dir(parent: Path, prefix: str, /) -> Path:
    """A fresh folder ``parent/prefix<random>`` with the umask's permissions (``mkdtemp`` makes 0700)."""
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path


def save_compressed(model: nn.Module, path, /, *, tokenizer=None, overwrite: bool = False) -> Path:
    """Write a compressed model (and optionally its tokenizer) with ``save_pretrained``, atomically.

    Parameters
    ----------
    model : transformers PreTrainedModel
        A model holding :class:`~adapters.layer.CURLinear`,
        :class:`~adapters.layer.InterpolativeLinear` or :class:`~adapters.layer.LowRankLinear`
        modules (from :func:`adapters.compress`).
    path : str or os.PathLike
        Destination folder: new, or an existing empty folder.
    tokenizer : transformers tokenizer, optional
        Saved alongside with ``save_pretrained`` (with its chat template).
    overwrite : bool, default False
        Replace an existing non-empty folder.

    Returns
    -------
    pathlib.Path
        The folder written.

    Raises
    ------
    ValueError
        If the model holds no compressed layer and was not compressed (save a dense model with
        ``save_pretrained``).
    FileExistsError
        If ``path`` exists, is not an empty folder, and ``overwrite`` is False.

    Notes
    -----
    Equivalent to ``model.save_pretrained(path)`` (plus ``tokenizer.save_pretrained(path)``),
    which writes config.json with the compression record (none for a structured model whose
    MLPs share one width and nothing else is factored: a stock checkpoint), the safetensors weights in the
    model's dtype (tied weights once) and generation_config.json.  Everything is written to a
    temporary folder beside ``path`` and renamed into place, so a crash never leaves a
    half-written checkpoint at ``path``.
    """
    path = Path(path)
    recorded = any(is_recorded(m) for m in model.modules())
    stock = getattr(model, "compression_config", None) is not None and not recorded
    if not recorded and not stock:
        raise ValueError(
            "the model holds no CURLinear, InterpolativeLinear or LowRankLinear modules; compress it first with "
            "adapters.compress(...) or save a dense model with model.save_pretrained(path)"
        )
    replace = path.exists() and not _is_empty_dir(path)
    if replace and not overwrite:
        raise FileExistsError(f"{path} already exists and is not an empty folder; pass overwrite=True or choose another path")
    if recorded:  # a structured model of one MLP width and nothing factored is the family's stock architecture
        attach(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_dir(path.parent, f".{path.name}.tmp-")
    try:
        model.save_pretrained(str(tmp))
        name_weights_for_adapters(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if replace:
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if path.exists():
                path.rmdir()  # empty: checked above
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _model_class(raw: dict, cfg_file: Path):
    import transformers

    names = raw.get("architectures")
    if not names:
        # save_compressed before issue 12 wrote models built in memory with no architectures;
        # it loaded every folder as a causal LM
        return transformers.AutoModelForCausalLM
    if not isinstance(names, list) or not isinstance(names[0], str):
        raise CheckpointMismatchError(
            f"{cfg_file}: 'architectures' must be a list of class names, got {names!r}; load the folder "
            "with the Auto class you mean, e.g. AutoModelForCausalLM.from_pretrained(path), after `import adapters`"
        )
    cls = getattr(transformers, names[0], None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise CheckpointMismatchError(
            f"{cfg_file} names the model class {names[0]!r}, which transformers {transformers.__version__} "
            "does not provide; install a transformers version that has it, or load the folder with an Auto "
            "class, e.g. AutoModelForCausalLM.from_pretrained(path), after `import adapters`"
        )
    return cls


def _stored_dtype(path: Path):
    from safetensors import safe_open

    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as handle:
            for key in handle.keys():
                t = handle.get_slice(key)
                name = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}.get(t.get_dtype())
                if name is not None:
                    return getattr(torch, name)
    return torch.float32


def load_compressed(path, /, *, dtype=None, device="cpu"):
    """Load a compressed folder: ``from_pretrained`` with the class named in its config.json.

    Parameters
    ----------
    path : str or os.PathLike
        The folder, written by ``save_pretrained`` / :func:`save_compressed`, or by
        ``save_compressed`` before issue 12 (format 1).
    dtype : torch.dtype, optional
        Load in this dtype (default: the stored one).
    device : str or torch.device, default "cpu"

    Returns
    -------
    transformers PreTrainedModel
        Of the class in ``config.json``'s ``architectures`` (a sequence classifier stays one), in
        eval mode (``AutoModelForCausalLM`` for a format-1 folder that names no class), with the
        compressed modules restored and ``model.compression_config`` set
        when the folder holds one; logits identical to the saved model.

    Raises
    ------
    FileNotFoundError
        If ``config.json`` or the safetensors weights are missing.
    CheckpointMismatchError
        If config.json holds no compression record, names a class transformers does not
        provide, or its record disagrees with the architecture or the tensors (the message
        names the module and what differs).

    Notes
    -----
    For a new folder this is ``cls.from_pretrained(path, dtype=dtype)``.  For a format-1 folder
    the ``cur_compression`` section is turned into a :class:`CompressedCheckpointConfig` and
    passed as ``quantization_config``, so the same quantizer builds and checks the layers.
    """
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} is missing; expected a folder written by model.save_pretrained or adapters.save_compressed")
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"{path} holds no .safetensors weights; expected a folder written by model.save_pretrained")
    raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    qc = raw.get("quantization_config")
    extra = {}
    if not (isinstance(qc, dict) and qc.get("quant_method") == QUANT_METHOD):
        section = raw.get(SECTION)
        if not isinstance(section, dict):
            raise CheckpointMismatchError(
                f"{cfg_file} has no quantization_config with quant_method {QUANT_METHOD!r} and no "
                f"'{SECTION}' section: this is not a CUR-compressed checkpoint; load it with "
                "AutoModelForCausalLM.from_pretrained(path)"
            )
        extra["quantization_config"] = CompressedCheckpointConfig.from_legacy(section, source=cfg_file)
        dtype = _stored_dtype(path) if dtype is None else dtype
    cls = _model_class(raw, cfg_file)
    model = cls.from_pretrained(str(path), dtype="auto" if dtype is None else dtype, local_files_only=True, **extra)
    if hasattr(model.config, SECTION):
        delattr(model.config, SECTION)  # the record replaces it when the model is saved again
    return model.to(device).eval()
