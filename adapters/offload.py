"""Models dispatched by accelerate: read offloaded weights one module at a time, place the results.

``from_pretrained(..., device_map="auto")`` and :func:`accelerate.dispatch_model` spread a model
over devices, host memory and disk. An offloaded module keeps its tensors on the ``meta``
device; an :class:`accelerate.hooks.AlignDevicesHook` with ``offload=True`` holds them in its
``weights_map`` (a host state dict, or files on disk) and loads them onto its
``execution_device`` for each forward pass only. Compression runs the calibration batches
through one decoder layer at a time with that layer's weights held on the device
(:func:`onloaded_block`: read once per pass, not once per batch), reads a weight outside a
forward pass through :func:`onloaded`, and puts each factored module where the dense one
lived (:class:`Placer`). :func:`check_readable` refuses, before any work, weights on ``meta``
that nothing holds; :func:`read_offloaded` reads one back for saving.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from torch import nn

__all__ = [
    "OffloadError", "Placer", "check_readable", "compute_device", "is_offloaded", "onloaded", "onloaded_block",
    "read_offloaded",
]

_ERR_META = (
    "{name!r} is on the meta device with nothing to read it from: expected real tensors, or an "
    "accelerate offload hook (AlignDevicesHook with offload=True) whose weights_map holds it, got "
    "a meta tensor without one. Load the weights before compressing: from_pretrained(path) "
    "without init_empty_weights, or from_pretrained(path, device_map=..., offload_folder=...) / "
    "accelerate.dispatch_model(model, device_map, offload_dir=...) to offload them"
)
_ERR_NO_FOLDER = (
    "{name!r} is offloaded to disk and its weights are read from files this run must not write "
    "to (the offload map has no folder of its own, e.g. it points into the checkpoint), so there "
    "is nowhere to write its factored replacement: expected offload_folder=, got None. Pass "
    "compress(..., offload_folder='some/folder') (the factors are written there, about the size "
    "of the compressed layers)"
)


#: Set on an offload hook while :func:`onloaded_block` holds its module's weights (and has
#: turned the hook's ``offload`` flag off), so that the module still counts as offloaded.
_HELD = "_adapters_held"


class OffloadError(ValueError):
    """Weights on ``meta`` that nothing holds, or factors of a disk-offloaded layer with nowhere to go.

    :func:`adapters.compress` and :func:`adapters.plan` raise it before any work.
    """


def _align_hooks(module: nn.Module) -> list:
    """The accelerate ``AlignDevicesHook`` objects on ``module`` (a ``SequentialHook`` unrolled)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    from accelerate.hooks import AlignDevicesHook

    hooks = list(getattr(hook, "hooks", (hook,)))
    return [h for h in hooks if isinstance(h, AlignDevicesHook)]


def _source(model: nn.Module, name: str):
    """``(hook, prefix)``: the offload hook holding module ``name``'s tensors, and their key prefix.

    Usually the module's own hook; with accelerate's ``preload_module_classes`` an ancestor's
    hook holds the tensors of its whole subtree (``place_submodules=True``). None when not
    offloaded.
    """
    parts = name.split(".") if name else []
    for k in range(len(parts), -1, -1):
        owner = model.get_submodule(".".join(parts[:k]))
        for h in _align_hooks(owner):
            offloaded = h.offload or getattr(h, _HELD, False)
            if offloaded and h.weights_map is not None and (k == len(parts) or h.place_submodules):
                rel = ".".join(parts[k:])
                return h, rel + "." if rel else ""
    return None


def _has_key(weights_map, key: str) -> bool:
    """Whether ``weights_map`` holds ``key``, without reading the tensor (a disk read)."""
    from accelerate.utils.offload import OffloadedWeightsLoader, PrefixedDataset

    if isinstance(weights_map, PrefixedDataset):
        return _has_key(weights_map.dataset, weights_map.prefix + key)
    if isinstance(weights_map, OffloadedWeightsLoader):
        return key in weights_map.state_dict or key in weights_map.index
    return key in weights_map


def _on_disk(weights_map, key: str) -> tuple[bool, str | None]:
    """``(on disk, folder)``: whether ``key`` is read from a file, and the map's own folder."""
    from accelerate.utils.offload import OffloadedWeightsLoader, PrefixedDataset

    if isinstance(weights_map, PrefixedDataset):
        return _on_disk(weights_map.dataset, weights_map.prefix + key)
    if isinstance(weights_map, OffloadedWeightsLoader):
        return key not in weights_map.state_dict, weights_map.save_folder
    return False, None


def _direct_tensors(module: nn.Module):
    yield from module.named_parameters(recurse=False)
    yield from module.named_buffers(recurse=False)


def compute_device(module: nn.Module, /) -> torch.device:
    """Where ``module`` computes: its accelerate execution device, else its first real tensor's.

    Parameters
    ----------
    module : nn.Module
        Any module, dispatched by accelerate or not.

    Returns
    -------
    torch.device
        The ``execution_device`` of the first accelerate hook in ``module``'s subtree that has
        one; otherwise the device of its first tensor not on ``meta``; ``cpu`` if none.
    """
    for sub in module.modules():
        for h in _align_hooks(sub):
            if h.execution_device is not None:
                d = h.execution_device
                return torch.device(f"cuda:{d}" if isinstance(d, int) else d)
    for t in list(module.parameters()) + list(module.buffers()):
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


def check_readable(model: nn.Module, /, *, names=(), offload_folder=None) -> None:
    """Refuse, before any work, a model whose weights cannot be read or whose results cannot be placed.

    Parameters
    ----------
    model : nn.Module
        The model to compress.
    names : iterable of str
        Dotted names of the modules that will be replaced (checked for a place to write to).
    offload_folder : str or os.PathLike, optional
        Where factors of disk-offloaded modules go (see :class:`Placer`).

    Raises
    ------
    OffloadError
        A tensor on ``meta`` that no accelerate offload hook holds (nothing to read: e.g. a
        model built under ``init_empty_weights`` and never loaded), or a disk-offloaded target
        whose offload map has no folder of its own while ``offload_folder`` is None.
    """
    for mod_name, mod in model.named_modules():
        meta = [t for t, v in _direct_tensors(mod) if v.device.type == "meta"]
        if not meta:
            continue
        src = _source(model, mod_name)
        for t in meta:
            full = f"{mod_name}.{t}" if mod_name else t
            if src is None or not _has_key(src[0].weights_map, src[1] + t):
                raise OffloadError(_ERR_META.format(name=full))
    if offload_folder is not None:
        return
    for name in names:
        src = _source(model, name)
        if src is None:
            continue
        hook, prefix = src
        key = next(t for t, _ in _direct_tensors(model.get_submodule(name)))
        disk, folder = _on_disk(hook.weights_map, prefix + key)
        if disk and folder is None:
            raise OffloadError(_ERR_NO_FOLDER.format(name=name))


def is_offloaded(model: nn.Module, key: str, /) -> bool:
    """Whether an accelerate offload hook holds state-dict entry ``key`` (host memory or disk).

    Parameters
    ----------
    model : nn.Module
    key : str
        A ``model.state_dict()`` key, typically of a tensor on the meta device.

    Returns
    -------
    bool
        True when the hook of its module (or of an ancestor placing its submodules) has
        ``key`` in its ``weights_map``: the tensor is offloaded, not missing. Nothing is read.
    """
    module_name, _, tensor = key.rpartition(".")
    src = _source(model, module_name)
    return src is not None and _has_key(src[0].weights_map, src[1] + tensor)


def read_offloaded(model: nn.Module, key: str, /) -> torch.Tensor:
    """The value of state-dict entry ``key`` held on ``meta`` by an offload hook, on the CPU.

    Parameters
    ----------
    model : nn.Module
    key : str
        A ``model.state_dict()`` key whose tensor is on the meta device.

    Returns
    -------
    torch.Tensor
        Read from the hook's ``weights_map`` (host memory or disk).

    Raises
    ------
    OffloadError
        If no offload hook holds it.
    """
    if not is_offloaded(model, key):
        raise OffloadError(_ERR_META.format(name=key))
    module_name, _, tensor = key.rpartition(".")
    hook, prefix = _source(model, module_name)
    return hook.weights_map[prefix + tensor].to("cpu")


@contextmanager
def onloaded(model: nn.Module, name: str, /):
    """Bring offloaded module ``name``'s tensors onto its execution device for the ``with`` block.

    As accelerate's ``AlignDevicesHook.pre_forward`` / ``post_forward`` do around one forward
    pass: each ``meta`` tensor is read from the hook's ``weights_map`` (host memory or disk)
    onto the execution device, and put back on ``meta`` on exit, so at most this module's
    weights are resident. A module that is not offloaded is yielded as it is.

    Parameters
    ----------
    model : nn.Module
    name : str
        Dotted name of the module in ``model``.

    Yields
    ------
    nn.Module
        The module, with real tensors.

    Examples
    --------
    >>> with onloaded(model, "model.layers.0.mlp.down_proj") as lin:   # doctest: +SKIP
    ...     W = lin.weight.double()
    """
    module = model.get_submodule(name)
    src = _source(model, name)
    meta = [t for t, v in _direct_tensors(module) if v.device.type == "meta"]
    if src is None or not meta:
        yield module
        return
    from accelerate.utils import set_module_tensor_to_device

    hook, prefix = src
    try:
        for t in meta:
            set_module_tensor_to_device(module, t, hook.execution_device, value=hook.weights_map[prefix + t])
        yield module
    finally:
        for t in meta:
            set_module_tensor_to_device(module, t, "meta")


@contextmanager
def onloaded_block(model: nn.Module, prefix: str, /):
    """Keep every offloaded tensor under ``prefix`` (one decoder layer) on its execution device.

    Within the block the layer's offload hooks stop loading and unloading around each forward
    pass (their ``offload`` flag is off), so the calibration batches run through the layer with
    its weights read once per pass, not once per batch; on exit every tensor goes back to
    ``meta`` and the hooks are restored. The device holds one layer's weights meanwhile.

    Modules swapped into the layer inside the block keep their own hooks (they load per
    forward); the modules present on entry are restored even if they were swapped out.

    Parameters
    ----------
    model : nn.Module
    prefix : str
        Dotted name of the block (e.g. ``"model.layers.3"``).
    """
    from accelerate.utils import set_module_tensor_to_device

    held = []  # (module, hook, tensor names) of the offloaded modules in the block
    try:
        for name, module in model.get_submodule(prefix).named_modules(prefix=prefix):
            meta = [t for t, v in _direct_tensors(module) if v.device.type == "meta"]
            src = _source(model, name) if meta else None
            if src is None:
                continue
            hook, key = src
            own = [h for h in _align_hooks(module) if h.offload]
            for t in meta:
                set_module_tensor_to_device(module, t, hook.execution_device, value=hook.weights_map[key + t])
            held.append((module, own, meta))
            for h in own:
                h.offload = False
                setattr(h, _HELD, True)
        yield
    finally:
        for module, own, meta in held:
            for t in meta:
                set_module_tensor_to_device(module, t, "meta")
            for h in own:
                h.offload = True
                delattr(h, _HELD)


class Placer:
    """Put each factored module where the dense module it replaces lived.

    * Not dispatched (no accelerate hook): the new module stays where it was built, on the
      dense weight's device.
    * Resident on a device under accelerate (``device_map`` entry ``0``, ``"cuda:1"``, or
      ``"cpu"`` when the main device is the CPU): built there, and given the same kind of
      execution-device hook.
    * Offloaded to host memory: an ``AlignDevicesHook(offload=True)`` whose ``weights_map``
      holds the factors on the CPU; the module's tensors are on ``meta``, brought to the same
      execution device for each forward pass, as the dense module's were.
    * Offloaded to disk: the factors are written to ``<folder>/compressed/<name>.safetensors``
      (``folder``: ``offload_folder``, else the offload map's own folder) and read from there
      for each forward pass.

    Parameters
    ----------
    model : nn.Module
    offload_folder : str or os.PathLike, optional
        Folder for the factors of disk-offloaded modules.

    Notes
    -----
    The dense weights stay in the offload map (host memory or the files they came from), so
    :func:`adapters.compress` can restore every module on failure; :meth:`discard` deletes the
    files written so far.
    """

    def __init__(self, model: nn.Module, /, *, offload_folder=None):
        self.model = model
        self.offload_folder = offload_folder
        self.written: list[str] = []

    def place(self, name: str, new: nn.Module, /) -> nn.Module:
        """Give ``new`` (built on the execution device) the placement of module ``name``.

        Returns
        -------
        nn.Module
            ``new``, hooked and offloaded like the module it replaces.
        """
        old = self.model.get_submodule(name)
        src = _source(self.model, name)
        if src is None:
            hooks = _align_hooks(old)
            if hooks:
                from accelerate.hooks import AlignDevicesHook, add_hook_to_module

                h = hooks[0]
                add_hook_to_module(new, AlignDevicesHook(execution_device=h.execution_device, skip_keys=h.skip_keys))
            return new
        from accelerate.hooks import AlignDevicesHook, add_hook_to_module

        hook, prefix = src
        key = next(t for t, _ in _direct_tensors(old))
        disk, folder = _on_disk(hook.weights_map, prefix + key)
        weights_map = self._write(name, new, self.offload_folder or folder) if disk else None
        add_hook_to_module(new, AlignDevicesHook(
            execution_device=hook.execution_device, offload=True, weights_map=weights_map,
            offload_buffers=hook.offload_buffers, skip_keys=hook.skip_keys,
        ))
        return new

    def _write(self, name: str, new: nn.Module, folder) -> dict:
        from accelerate.utils.offload import OffloadedWeightsLoader
        from safetensors.torch import save_file

        tensors = {t: v.detach().to("cpu").contiguous() for t, v in _direct_tensors(new)}
        path = os.path.join(os.fspath(folder), "compressed", f"{name}.safetensors")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_file(tensors, path)
        self.written.append(path)
        index = {t: {"safetensors_file": path, "weight_name": t, "dtype": str(v.dtype).removeprefix("torch.")}
                 for t, v in tensors.items()}
        return OffloadedWeightsLoader(index=index)

    def discard(self) -> None:
        """Delete the factor files written so far (the compression failed and was undone)."""
        for path in self.written:
            if os.path.exists(path):
                os.remove(path)
        self.written.clear()
