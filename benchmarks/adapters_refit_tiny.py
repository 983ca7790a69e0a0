"""Which knob of the sequential refit matters, on tiny random Llama models (seconds, any CPU).

The refit (``sequential=True``; ``mix``, ``refit_ridge``, ``passes``: PIFA's "M", arXiv
2501.19090) on random 4-layer Llama models (hidden 64, intermediate 128, vocabulary 256) at
-50% of the parameters, calibrated on 6 x 32 or 16 x 32 random tokens (fewer tokens than the
down projections' 128 inputs in the first case, 4x more in the second), three model seeds.
Measure: KL divergence of the compressed model's next-token distribution from the dense one's
on 8 x 32 held-out random tokens (lower is better).

Random weights have none of a trained model's structure (massive activations, a decaying
spectrum); the figures say which knob moves the fit, not by how much it moves perplexity.
benchmarks/adapters_quality.py measures that on SmolLM2-135M.

Usage::

    python benchmarks/adapters_refit_tiny.py    # writes benchmarks/results/adapters_refit_tiny.txt
"""

from __future__ import annotations

import copy
import itertools
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from adapters import compress  # noqa: E402

VOCAB = 256


def tiny_llama(seed: int) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def kl_to_dense(model, tokens, dense_logp) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(model(tokens).logits.double(), -1)
    return float((dense_logp.exp() * (dense_logp - logp)).sum(-1).mean())


def runs() -> list[tuple[str, dict]]:
    out = [("sequential=False", {})]
    for mix, ridge in itertools.product((0.0, 0.5, 0.75, 1.0), (0.0, 1e-3, 1e-2, 1e-1)):
        out.append((f"mix={mix} refit_ridge={ridge}", dict(sequential=True, mix=mix, refit_ridge=ridge)))
    for ridge in (0.0, 1e-2):
        out.append((f"mix=0.75 refit_ridge={ridge} passes=2", dict(sequential=True, mix=0.75, refit_ridge=ridge,
                                                                   passes=2)))
    return out


def main() -> int:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    held = torch.randint(0, VOCAB, (8, 32), generator=torch.Generator().manual_seed(2))
    lines = [__doc__.split("\n\n")[1].replace("\n", " "), ""]
    for ncal in (6, 16):
        calib = torch.randint(0, VOCAB, (ncal, 32), generator=torch.Generator().manual_seed(1))
        table: dict[str, list[float]] = {}
        for seed in (0, 1, 2):
            base = tiny_llama(seed)
            with torch.no_grad():
                dense_logp = torch.log_softmax(base(held).logits.double(), -1)
            for name, opts in runs():
                model, _ = compress(copy.deepcopy(base), calibration=calib, reduction=0.5, nsamples=ncal, seqlen=32,
                                    progress=False, **opts)
                table.setdefault(name, []).append(kl_to_dense(model, held, dense_logp))
        lines.append(f"calibration {ncal} x 32 tokens, -50%: held-out KL to dense (x 1e-3), seeds 0 1 2, mean")
        for name, v in table.items():
            lines.append(f"  {name:40s} " + " ".join(f"{1e3 * x:7.4f}" for x in v) + f"   {1e3 * sum(v) / len(v):7.4f}")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    (HERE / "results" / "adapters_refit_tiny.txt").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
