import copy
import math

import pytest
import torch

from adapters import AdaptersWarning, CURLinear, compress, load_compressed, save_compressed
from adapters.healing import HealingError, heal, trainable_parameters

from conftest import make_tiny_llama

FAST = dict(steps=4, batch_size=2, seqlen=16, progress=False)


@pytest.fixture
def pair(calib_tokens):
    """(compressed student, dense teacher) at rank 8 everywhere.

    A random init gives near-uniform next-token distributions (KL ~1e-3 whatever U is); a
    10x larger output head makes them peaked, so the distillation loss has signal.
    """
    teacher = make_tiny_llama()
    with torch.no_grad():
        teacher.lm_head.weight.mul_(10.0)
    student, _ = compress(copy.deepcopy(teacher), calibration=calib_tokens, rank=8, form="cur", progress=False)
    return student, teacher


@pytest.fixture
def stream():
    return torch.randint(0, 128, (400,), generator=torch.Generator().manual_seed(5))


def _cores(model):
    """Every trainable core: ``U`` of a CURLinear, ``P`` of an InterpolativeLinear."""
    return {n: p.detach().clone() for n, p in trainable_parameters(model).items()}


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_only_u_changes(pair, stream):
    student, teacher = pair
    before = _snapshot(student)
    teacher_before = _snapshot(teacher)
    flags = [p.requires_grad for p in student.parameters()]
    res = heal(student, teacher=teacher, data=stream, lr=1e-2, **FAST)
    after = _snapshot(student)
    assert res.steps_run == 4 and len(res.losses) == 4 and len(res.kl_losses) == 4 and not res.ce_losses
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    cur_names = [n for n, m in student.named_modules() if isinstance(m, CURLinear)]
    assert changed == {f"{n}.U" for n in cur_names}
    assert all(torch.equal(teacher_before[k], v) for k, v in _snapshot(teacher).items())
    assert [p.requires_grad for p in student.parameters()] == flags
    assert not student.training and not teacher.training
    assert res.trainable_params == sum(student.get_submodule(n).U.numel() for n in cur_names)


def test_interpolative_model_trains_only_p(calib_tokens, stream):
    from adapters.layer import InterpolativeLinear

    teacher = make_tiny_llama()
    with torch.no_grad():
        teacher.lm_head.weight.mul_(10.0)
    student, _ = compress(copy.deepcopy(teacher), calibration=calib_tokens, rank=8, form="interpolative", progress=False)
    before = _snapshot(student)
    res = heal(student, teacher=teacher, data=stream, lr=1e-2, **FAST)
    after = _snapshot(student)
    names = [n for n, m in student.named_modules() if isinstance(m, InterpolativeLinear)]
    assert names and {k for k in before if not torch.equal(before[k], after[k])} == {f"{n}.P" for n in names}
    assert res.trainable_params == sum(student.get_submodule(n).P.numel() for n in names)
    assert set(trainable_parameters(student)) == {f"{n}.P" for n in names}


def test_optional_norms_train(pair, stream):
    student, teacher = pair
    before = _snapshot(student)
    heal(student, teacher=teacher, data=stream, lr=1e-2, train_norms=True, **FAST)
    after = _snapshot(student)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("norm" in k for k in changed)
    assert all(k.endswith(".U") or "norm" in k for k in changed)


@pytest.mark.parametrize("with_teacher", [True, False], ids=["kd", "ce"])
def test_loss_decreases_on_fixed_batch(pair, with_teacher):
    student, teacher = pair
    batch = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(7))
    res = heal(student, teacher=teacher if with_teacher else None, data=[batch], steps=30, lr=0.1,
               warmup=0, progress=False)
    assert res.losses[-1] < 0.9 * res.losses[0]
    assert (res.kl_losses if with_teacher else res.ce_losses) == res.losses


def test_deterministic_from_seed(pair, stream):
    student, teacher = pair
    a, b, c = copy.deepcopy(student), copy.deepcopy(student), copy.deepcopy(student)
    ra = heal(a, teacher=teacher, data=stream, lr=1e-2, seed=3, **FAST)
    rb = heal(b, teacher=teacher, data=stream, lr=1e-2, seed=3, **FAST)
    rc = heal(c, teacher=teacher, data=stream, lr=1e-2, seed=4, **FAST)
    assert ra.losses == rb.losses
    assert all(torch.equal(x, y) for x, y in zip(_cores(a).values(), _cores(b).values()))
    assert ra.losses != rc.losses


class _PoisonAt:
    """Forward hook that turns a module's output into NaN on its ``at``-th call (0-based)."""

    def __init__(self, at):
        self.at = at
        self.calls = 0

    def __call__(self, _mod, _args, out):
        self.calls += 1
        if self.calls - 1 == self.at:
            return torch.full_like(out, math.nan)
        return out


@pytest.mark.parametrize("bad_step", [0, 2])
def test_nan_stops_and_restores_last_good_u(pair, stream, bad_step):
    student, teacher = pair
    reference = copy.deepcopy(student)
    original = _cores(student)
    constant_lr = dict(lr=1e-2, warmup=0, min_lr_ratio=1.0, seed=1, batch_size=2, seqlen=16, progress=False)
    handle = student.model.norm.register_forward_hook(_PoisonAt(bad_step))
    with pytest.raises(HealingError, match=rf"step {bad_step}: the loss is nan.*last good values") as info:
        heal(student, teacher=teacher, data=stream, steps=5, **constant_lr)
    handle.remove()
    assert info.value.step == bad_step and info.value.result.steps_run == bad_step
    assert len(info.value.result.losses) == bad_step
    if bad_step == 0:
        expected = original
    else:
        heal(reference, teacher=teacher, data=stream, steps=bad_step, **constant_lr)
        expected = _cores(reference)
    got = _cores(student)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)
    assert all(p.grad is None for p in student.parameters())


def test_non_finite_gradient_stops(pair, stream, monkeypatch):
    student, teacher = pair
    original = _cores(student)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm: torch.tensor(math.inf))
    with pytest.raises(HealingError, match="gradient norm is inf"):
        heal(student, teacher=teacher, data=stream, **FAST)
    assert all(torch.equal(v, original[k]) for k, v in _cores(student).items())


def test_save_load_after_heal_is_exact(pair, stream, eval_tokens, tmp_path):
    student, teacher = pair
    heal(student, teacher=teacher, data=stream, lr=1e-2, **FAST)
    loaded = load_compressed(save_compressed(student, tmp_path / "healed"))
    with torch.no_grad():
        assert torch.equal(loaded(eval_tokens).logits, student(eval_tokens).logits)


def test_bfloat16_model_keeps_dtype(pair, stream):
    student, teacher = pair
    student.to(torch.bfloat16)
    teacher.to(torch.bfloat16)
    before = _cores(student)
    res = heal(student, teacher=teacher, data=stream, lr=5e-2, **FAST)
    assert res.options["autocast"] is True
    after = _cores(student)
    assert all(v.dtype == torch.bfloat16 for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_teacher_shares_frozen_storage(pair, stream):
    student, teacher = pair
    with torch.no_grad():
        ref = teacher(stream[None, :32]).logits
    res = heal(student, teacher=teacher, data=stream, **FAST)
    dense_only = sum(p.numel() for n, p in student.named_parameters() if n.split(".")[-1] not in ("U", "C", "R"))
    assert res.shared_params == dense_only
    assert teacher.model.embed_tokens.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(teacher(stream[None, :32]).logits, ref)
    fresh = make_tiny_llama()
    res = heal(student, teacher=fresh, data=stream, share_weights=False, **FAST)
    assert res.shared_params == 0


def test_hidden_state_term_and_mixed_loss(pair, stream):
    student, teacher = pair
    res = heal(student, teacher=teacher, data=stream, alpha=0.5, hidden_weight=1.0, **FAST)
    assert len(res.ce_losses) == len(res.kl_losses) == len(res.hidden_losses) == 4
    for tot, ce, kl, hid in zip(res.losses, res.ce_losses, res.kl_losses, res.hidden_losses):
        assert tot == pytest.approx(0.5 * ce + 0.5 * kl + hid, rel=1e-5)


def test_eval_callback_schedule(pair, stream):
    student, teacher = pair
    seen = []

    def cb(model, step):
        assert not torch.is_grad_enabled()
        seen.append(step)
        return step * 10

    res = heal(student, teacher=teacher, data=stream, steps=5, batch_size=2, seqlen=16, progress=False,
               eval_callback=cb, eval_every=2)
    assert seen == [0, 2, 4, 5]
    assert res.evals == [(0, 0), (2, 20), (4, 40), (5, 50)]


def test_batch_kinds(pair):
    student, _ = pair
    rows = torch.randint(0, 128, (6, 16), generator=torch.Generator().manual_seed(0))
    assert heal(student, data=rows, **FAST).tokens == 4 * 2 * 16
    gen = ({"input_ids": rows[i : i + 2]} for i in range(0, 4, 2))
    with pytest.warns(AdaptersWarning, match="ran out after 2 of 4 steps"):
        res = heal(student, data=gen, **FAST)
    assert res.steps_run == 2


def test_no_cur_modules_is_refused(stream):
    with pytest.raises(ValueError, match="holds none; compress it first"):
        heal(make_tiny_llama(), data=stream, **FAST)
    with pytest.raises(ValueError, match="holds none"):
        trainable_parameters(make_tiny_llama())


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(steps=0), ValueError, "steps must be a positive int"),
        (dict(lr=-1.0), ValueError, "lr must be"),
        (dict(lr=math.nan), ValueError, "lr must be"),
        (dict(alpha=1.5), ValueError, "alpha must be"),
        (dict(alpha=0.5), ValueError, "needs teacher="),
        (dict(hidden_weight=1.0), ValueError, "needs teacher="),
        (dict(temperature=0.0), ValueError, "temperature must be"),
        (dict(warmup=10), ValueError, "warmup must be"),
        (dict(seed="x"), TypeError, "seed must be an int"),
        (dict(eval_callback=3), TypeError, "eval_callback must be callable"),
    ],
)
def test_bad_options(pair, stream, kwargs, exc, match):
    student, _ = pair
    original = _cores(student)
    options = dict(FAST, data=stream) | kwargs
    with pytest.raises(exc, match=match):
        heal(student, **options)
    assert all(torch.equal(v, original[k]) for k, v in _cores(student).items())


@pytest.mark.parametrize(
    "data, exc, match",
    [
        (torch.tensor([0.5, math.nan] * 50), TypeError, "integer ids"),
        (torch.randint(0, 500, (200,)), ValueError, r"token ids must lie in \[0, 128\)"),
        (torch.randint(0, 128, (2, 3, 4)), ValueError, "1-D .* or 2-D"),
        (torch.randint(0, 128, (10,)), ValueError, "more than seqlen=16"),
        ("some text", TypeError, "tokenizer= is needed"),
        (None, TypeError, "data=None heals on the WikiText-2 calibration split"),
        (42, TypeError, "data must be a string"),
        ([[1, 2, 3]], TypeError, "data must be a string"),
    ],
)
def test_bad_data(pair, data, exc, match):
    student, _ = pair
    with pytest.raises(exc, match=match):
        heal(student, data=data, **FAST)


def test_teacher_checks(pair, stream):
    student, teacher = pair
    with pytest.raises(ValueError, match="is the model being healed"):
        heal(student, teacher=student, data=stream, **FAST)
    with pytest.raises(ValueError, match="teacher vocabulary has 64 tokens"):
        heal(student, teacher=make_tiny_llama(vocab=64), data=stream, **FAST)
    with pytest.raises(TypeError, match="teacher must be a torch module"):
        heal(student, teacher="smollm2", data=stream, **FAST)


def test_evaluation_split_is_refused(pair):
    from adapters.eval import load_wikitext2

    student, _ = pair
    split = load_wikitext2()

    class Tok:
        def __call__(self, text, **kw):
            return {"input_ids": torch.zeros(1, 64, dtype=torch.long)}

    with pytest.raises(ValueError, match="evaluation split"):
        heal(student, data=split.eval_text[:20000], tokenizer=Tok(), **FAST)
    res = heal(student, data=split.calibration_text[:20000], tokenizer=Tok(), **FAST)
    assert res.steps_run == 4


def test_cli_heal(pair, tmp_path, stream, capsys):
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from adapters import cli

    student, teacher = pair
    vocab = {chr(33 + i): i for i in range(94)} | {"[UNK]": 94}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")
    save_compressed(student, tmp_path / "cur", tokenizer=tok)
    teacher.save_pretrained(tmp_path / "dense")
    tok.save_pretrained(tmp_path / "dense")
    (tmp_path / "data.txt").write_text("To be, or not to be, that is the question. " * 20)
    argv = ["heal", str(tmp_path / "cur"), "-o", str(tmp_path / "healed"), "--teacher", str(tmp_path / "dense"),
            "--data", str(tmp_path / "data.txt"), "--steps", "3", "--batch-size", "2", "--seqlen", "16",
            "--quiet", "--report", str(tmp_path / "r.json")]
    assert cli.main(argv) == 0
    assert "healed 3 steps" in capsys.readouterr().out
    healed = load_compressed(tmp_path / "healed")
    assert any(not torch.equal(a.U, b.U) for a, b in zip(
        (m for m in healed.modules() if isinstance(m, CURLinear)),
        (m for m in student.modules() if isinstance(m, CURLinear)),
    ))
    assert cli.main(["heal", str(tmp_path / "dense"), "-o", str(tmp_path / "x"), "--quiet"]) == 2
    assert "holds no compressed (CURLinear/InterpolativeLinear) modules" in capsys.readouterr().err


def test_non_finite_update_is_rolled_back(pair, stream, monkeypatch):
    student, teacher = pair
    reference = copy.deepcopy(student)
    constant_lr = dict(lr=1e-2, warmup=0, min_lr_ratio=1.0, seed=1, batch_size=2, seqlen=16, progress=False)
    heal(reference, teacher=teacher, data=stream, steps=1, **constant_lr)
    real_step = torch.optim.AdamW.step
    calls = []

    def step_then_poison(self, *a, **k):
        out = real_step(self, *a, **k)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(math.inf)
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_poison)
    with pytest.raises(HealingError, match="step 1: the updated core is non-finite"):
        heal(student, teacher=teacher, data=stream, steps=5, **constant_lr)
    got, expected = _cores(student), _cores(reference)
    assert all(torch.equal(got[k], expected[k]) for k in got)


def test_compress_heal_shortcut(calib_tokens):
    teacher = make_tiny_llama()
    plain, _ = compress(copy.deepcopy(teacher), calibration=calib_tokens, rank=8, progress=False)
    healed, report = compress(
        copy.deepcopy(teacher), calibration=calib_tokens, rank=8, progress=False,
        heal={"teacher": teacher, **FAST},
    )
    assert report.heal is not None and report.heal["steps"] == FAST["steps"]
    before, after = _cores(plain), _cores(healed)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert compress(copy.deepcopy(teacher), calibration=calib_tokens, rank=8,
                    progress=False)[1].heal is None
