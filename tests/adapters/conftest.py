"""Fixtures for the adapters tests: tiny random Llama models built in memory (no downloads)."""

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")


def _deim_reference(V, /):
    """DEIM (Sorensen & Embree 2016, Alg. 1), written out independently for hand checks."""
    is_torch = isinstance(V, torch.Tensor)
    A = V.detach().cpu().double().numpy() if is_torch else np.asarray(V, dtype=np.float64)
    n, k = A.shape
    p = [int(np.argmax(np.abs(A[:, 0])))]
    for j in range(1, k):
        c = np.linalg.solve(A[p, :j], A[p, j])
        r = A[:, j] - A[:, :j] @ c
        p.append(int(np.argmax(np.abs(r))))
    idx = np.asarray(p, dtype=np.int64)
    return torch.as_tensor(idx, device=V.device) if is_torch else idx


def make_tiny_llama(seed=0, *, layers=2, hidden=32, intermediate=64, vocab=128, tie=False):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, tie_word_embeddings=tie,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    return model


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture
def calib_tokens():
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 128, (16, 32), generator=gen)


@pytest.fixture
def eval_tokens():
    gen = torch.Generator().manual_seed(2)
    return torch.randint(0, 128, (2, 32), generator=gen)


def char_tokenizer():
    """A character-level fast tokenizer built in memory (no downloads)."""
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(33 + i): i for i in range(94)} | {"[UNK]": 94}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")


def save_char_tokenizer(path):
    tok = char_tokenizer()
    tok.save_pretrained(path)
    return tok
