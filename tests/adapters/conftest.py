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


def _tiny_llama_config(*, layers=2, hidden=32, intermediate=64, vocab=128, tie=False, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, tie_word_embeddings=tie, **extra,
    )


def make_tiny_llama(seed=0, *, layers=2, hidden=32, intermediate=64, vocab=128, tie=False, dtype=None):
    """A random ``LlamaForCausalLM``; ``dtype`` builds it in that dtype as ``from_pretrained``
    would (rotary buffers stay float32, unlike ``model.to(dtype)``)."""
    from transformers import LlamaForCausalLM

    cfg = _tiny_llama_config(layers=layers, hidden=hidden, intermediate=intermediate, vocab=vocab, tie=tie)
    torch.manual_seed(seed)
    if dtype is None:
        return LlamaForCausalLM(cfg).eval()
    return LlamaForCausalLM._from_config(cfg, dtype=dtype).eval()


def make_tiny_classifier(seed=0, *, labels=3, dtype=None):
    """A random ``LlamaForSequenceClassification`` (2 layers, hidden 32, pad token 0)."""
    from transformers import LlamaForSequenceClassification

    cfg = _tiny_llama_config(num_labels=labels, pad_token_id=0)
    torch.manual_seed(seed)
    return LlamaForSequenceClassification._from_config(cfg, dtype=dtype or torch.float32).eval()


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


def one_thread_logits(model, tokens):
    """Logits on one torch thread: a checkpoint loaded by transformers holds its tensors as views
    into the file at any alignment, and some BLAS kernels split their work by alignment on several
    threads, so bitwise comparisons with a loaded copy pin the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return model(tokens).logits
    finally:
        torch.set_num_threads(threads)
