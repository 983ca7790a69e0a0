"""Loading a GGUF file through transformers once instead of three times.

``from_pretrained(folder, gguf_file=...)`` on the tokenizer and on the model makes transformers
parse the file three times (the tokenizer's config, the model's config, the tensors), read
every metadata value (the 49,152 tokens and 48,900 merges of SmolLM2's vocabulary) three
times, and map each of the model's modules to its GGUF name by rebuilding the whole GGUF name
table once per module. On SmolLM2-135M that is 38 s of a 2-core machine's load, 3 s of it
de-quantizing (``benchmarks/compress_cpu.py`` prints the load time). :func:`parsed_once`
remembers both for the duration of a load; what transformers builds from them is unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os

__all__ = ["parsed_once"]


@contextlib.contextmanager
def parsed_once():
    """Within the block, one ``gguf.GGUFReader`` per file, one GGUF name table per model, and
    the metadata of a file read once.

    transformers reaches all three at call time (``gguf.GGUFReader``,
    ``gguf.get_tensor_name_map``, ``transformers.modeling_gguf_pytorch_utils.load_gguf_checkpoint``
    without tensors, which the tokenizer and the config call), so the block replaces them by
    memoised versions (the metadata handed out as a fresh deep copy each time) and puts the
    originals back on exit, also on error. Without the ``gguf`` package it does nothing
    (transformers then raises its own error asking for it).

    Yields
    ------
    dict
        The readers parsed within the block, by absolute path (for inspection).

    Examples
    --------
    >>> with parsed_once():                                                           # doctest: +SKIP
    ...     tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    ...     model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    """
    try:
        import gguf
    except ImportError:
        yield {}
        return
    from transformers import modeling_gguf_pytorch_utils as hf_gguf

    reader_class, name_map, checkpoint = gguf.GGUFReader, gguf.get_tensor_name_map, hf_gguf.load_gguf_checkpoint
    readers: dict = {}
    metadata: dict = {}

    def reader(path, mode="r"):
        key = (os.path.abspath(os.fspath(path)), mode)
        if key not in readers:
            readers[key] = reader_class(path, mode)
        return readers[key]

    def load_checkpoint(path, return_tensors=False, model_to_load=None, **kw):
        if return_tensors or model_to_load is not None or kw:
            return checkpoint(path, return_tensors=return_tensors, model_to_load=model_to_load, **kw)
        key = os.path.abspath(os.fspath(path))
        if key not in metadata:
            metadata[key] = checkpoint(path, return_tensors=False)
        return copy.deepcopy(metadata[key])

    gguf.GGUFReader = reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    hf_gguf.load_gguf_checkpoint = load_checkpoint
    try:
        yield readers
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map
        hf_gguf.load_gguf_checkpoint = checkpoint
