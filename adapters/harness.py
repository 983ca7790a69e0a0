"""``python -m adapters.harness``: EleutherAI's lm-evaluation-harness command line, able to
load compressed checkpoints.

``lm_eval --model hf --model_args pretrained=DIR`` loads ``DIR`` with transformers in a process
that never imports :mod:`adapters`, so the checkpoint's ``quantization_config``
(``quant_method: curlinalg``) names a method transformers does not know, and lm-eval stops
with ``ValueError: Unknown quantization type, got curlinalg``. lm-eval 0.4 has no plugin
mechanism for models that a package could use to run code first (its model registry is filled
by imports, not by entry points), and none of ``--model_args`` imports a module. This module
imports :mod:`adapters` (which registers the quantizer) and then runs lm-eval's own command
line, unchanged: every argument is lm-eval's, and the results are what ``lm_eval`` prints and
writes.

Usage::

    python -m adapters.harness --model hf --model_args pretrained=out/smol-cur \\
        --tasks wikitext --device cpu --batch_size 1

In Python, ``import adapters`` before ``lm_eval.simple_evaluate(...)`` is all it takes.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv=None) -> int:
    """Run lm-eval's command line with :mod:`adapters` imported.

    Parameters
    ----------
    argv : list of str, optional
        lm-eval's arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 when lm-eval returns; lm-eval exits by itself on errors (``SystemExit``).

    Raises
    ------
    ModuleNotFoundError
        If lm-eval is not installed; the message says what to install.
    """
    import adapters  # noqa: F401  (registers the quantizer that reads compressed checkpoints)

    try:
        from lm_eval.__main__ import cli_evaluate
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "python -m adapters.harness runs lm-evaluation-harness, which is not installed: "
            "pip install 'lm-eval>=0.4.13,<0.5'"
        ) from exc
    saved = sys.argv
    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()  # parses sys.argv, as the lm_eval script does
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
