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
    assert seen == [False] * 4  # the check of the chunked head (two calls), then the two windows


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


def _direct_nll(model, ids, seqlen):
    """The summed NLL of the non-overlapping windows from the model's own logits."""
    nll = 0.0
    with torch.no_grad():
        for k in range(ids.numel() // seqlen):
            w = ids[k * seqlen : (k + 1) * seqlen][None]
            logits = model(input_ids=w, use_cache=False).logits[0, :-1].double()
            nll += torch.nn.functional.cross_entropy(logits, w[0, 1:], reduction="sum").item()
    return nll


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_the_head_applied_in_chunks_gives_the_models_own_nll(family):
    """Issue 23: the output head runs on 256 positions at a time after the decoder, never on the
    whole window, and scores as the model's own logits do."""
    from adapters.eval import _output_head

    model = make_tiny(family)
    seqlen = 64
    ids = torch.randint(3, 128, (3 * seqlen + 5,), generator=torch.Generator().manual_seed(1))
    assert _output_head(model, ids[None, :seqlen]) == (model.base_model, model.get_output_embeddings())
    want = _direct_nll(model, ids, seqlen)
    widths = []
    model.get_output_embeddings().register_forward_hook(lambda mod, args, out: widths.append(args[0].shape[1]))
    for batch_size in (1, 2):
        widths.clear()
        res = perplexity(model, None, ids, seqlen=seqlen, batch_size=batch_size, progress=False)
        assert res.tokens == 3 * (seqlen - 1)
        assert math.isclose(res.nll, want, rel_tol=1e-6)
        # the check's 8 tokens twice (the model's forward and the route), then each batch's scored positions
        assert widths == [8, 8] + [seqlen - 1] * math.ceil(3 / batch_size)


def test_token_nll_with_a_head_is_the_head_applied_to_the_whole_window():
    from adapters.eval import _token_nll

    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(6, 11)
    states = torch.randn(2, 37, 6, generator=g)
    ids = torch.randint(0, 11, (2, 37), generator=g)
    with torch.no_grad():
        want = _token_nll(head(states), ids)
        for chunk in (1, 5, 36, 100):
            torch.testing.assert_close(_token_nll(states, ids, head=head, chunk=chunk), want, rtol=1e-6, atol=1e-6)


def test_a_model_that_caps_or_scales_its_logits_is_scored_on_its_own_logits():
    """Gemma 2 soft-caps its logits (config.final_logit_softcapping); a model that changes them
    without saying so in its config fails the check on the first tokens: both take the model's
    forward pass, and score as its own logits do."""
    from adapters.eval import _output_head

    seqlen = 32
    ids = torch.randint(3, 128, (2 * seqlen,), generator=torch.Generator().manual_seed(2))
    gemma2 = make_tiny("gemma2")
    assert gemma2.config.final_logit_softcapping is not None
    assert _output_head(gemma2, ids[None, :seqlen]) is None
    scaled = make_tiny("llama")
    assert _output_head(scaled, ids[None, :seqlen]) is not None

    def scale(mod, args, kwargs, out):
        out.logits = 3 * out.logits
        return out

    scaled.register_forward_hook(scale, with_kwargs=True)
    assert _output_head(scaled, ids[None, :seqlen]) is None
    for model, checked in ((gemma2, []), (scaled, [8, 8])):
        want = _direct_nll(model, ids, seqlen)
        widths = []
        model.get_output_embeddings().register_forward_hook(lambda mod, args, out: widths.append(args[0].shape[1]))
        res = perplexity(model, None, ids, seqlen=seqlen, progress=False)
        assert widths == checked + [seqlen] * 2  # the whole windows, through the model's forward
        assert math.isclose(res.nll, want, rel_tol=1e-6)
