import math

import pytest
import torch

from adapters.eval import context_length, perplexity

from conftest import make_tiny_llama
from families import make_tiny


def test_perplexity_matches_direct_nll():
    model = make_tiny_llama(0)
    ids = torch.randint(0, 128, (100,), generator=torch.Generator().manual_seed(0))
    res = perplexity(model, None, ids, seqlen=32, progress=False)
    assert res.windows == 3 and res.tokens == 3 * 31
    nll = 0.0
    with torch.no_grad():
        for k in range(3):
            w = ids[k * 32 : (k + 1) * 32][None]
            logits = model(w).logits[0, :-1]
            nll += torch.nn.functional.cross_entropy(logits, w[0, 1:], reduction="sum").item()
    assert math.isclose(res.ppl, math.exp(nll / 93), rel_tol=1e-6)
    strided = perplexity(model, None, ids, seqlen=32, stride=16, progress=False)
    assert strided.tokens == 31 + 16 * (strided.windows - 1)


def test_perplexity_errors():
    model = make_tiny_llama(0)
    with pytest.raises(ValueError, match="at least"):
        perplexity(model, None, torch.arange(10), seqlen=32, progress=False)
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, None, torch.arange(100), seqlen=32, stride=64, progress=False)
    with pytest.raises(TypeError, match="tokenizer"):
        perplexity(model, None, "text", seqlen=32, progress=False)


def test_a_window_longer_than_the_context_is_refused_with_the_limit():
    """Issue 24: GPT-2 (learned positions) failed with 'IndexError: index out of range in self'
    on windows longer than its n_positions."""
    model = make_tiny("gpt2")
    context = context_length(model)
    assert context == model.config.n_positions
    ids = torch.randint(3, 128, (4 * context,), generator=torch.Generator().manual_seed(0))
    assert perplexity(model, None, ids, seqlen=context, progress=False).windows == 4
    with pytest.raises(ValueError, match=rf"seqlen={context + 1} is longer than the model's context: GPT2LMHeadModel "
                                         rf"has {context} positions \(config\.\w+\); pass seqlen={context}"):
        perplexity(model, None, ids, seqlen=context + 1, progress=False)
    llama = make_tiny_llama(0)
    assert context_length(llama) == llama.config.max_position_embeddings
    assert context_length(torch.nn.Linear(2, 2)) is None


def test_token_nll_in_chunks_is_the_whole_window_log_softmax():
    from adapters.eval import _token_nll

    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(2, 37, 11, generator=g)
    ids = torch.randint(0, 11, (2, 37), generator=g)
    want = -torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    for chunk in (1, 5, 36, 100):  # chunks that split the window, end on it, and exceed it
        torch.testing.assert_close(_token_nll(logits, ids, chunk=chunk), want, rtol=0, atol=1e-6)


def test_perplexity_builds_no_autograd_graph():
    """Scoring keeps no activations for a backward pass (the parameters require grad)."""
    model = make_tiny_llama(0)
    seen = []
    model.lm_head.register_forward_hook(lambda mod, args, out: seen.append(out.requires_grad))
    perplexity(model, None, torch.arange(64) % 128, seqlen=32, progress=False)
    assert seen == [False, False]


def test_a_long_text_is_scored_on_the_ids_of_the_whole_text():
    """perplexity tokenizes only a prefix when max_tokens is given: the ids it scores are the
    first max_tokens of the whole text's, at every cut (the char tokenizer's tokens are 1 char)."""
    from adapters.eval import _text_ids

    from conftest import char_tokenizer

    tok = char_tokenizer()
    text = "".join(chr(33 + (i * 7) % 90) for i in range(9000))
    whole = tok(text, return_tensors="pt")["input_ids"][0]
    for n in (64, 500, 4000):
        torch.testing.assert_close(_text_ids(text, tok, n), whole[:n], rtol=0, atol=0)
    assert torch.equal(_text_ids(text, tok, None).reshape(-1), whole.reshape(-1))
