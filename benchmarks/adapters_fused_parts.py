"""Fused projections (Phi-3's ``qkv_proj``, ``gate_up_proj``): compress the fused matrix, or its parts?

On tiny random Phi-3 models (4 seeds; 2 blocks, hidden 64, 4 heads of 16, 2 key-value heads,
intermediate 128), compressed with the default method at ``reduction=0.2`` on 16 x 64 random
calibration tokens, the relative error of the logits on 4 x 64 held-out random tokens:

* ``fused``: the library's behaviour, ``qkv_proj`` and ``gate_up_proj`` each one target;
* ``parts``: each fused linear split beforehand into its parts (``q k v``; ``gate up``), each
  part one target (same function and parameter count before compression).

Usage (writes ``benchmarks/results/adapters_fused_parts.json``; about 10 s on one core)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adapters_fused_parts.py
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import _common  # noqa: E402  (puts the repository root on sys.path)
from adapters import InterpolativeConfig, compress  # noqa: E402


class Parts(nn.Module):
    """A fused linear as its row blocks, outputs concatenated (the same map)."""

    def __init__(self, linear: nn.Linear, sizes):
        super().__init__()
        self.parts = nn.ModuleList()
        for w in linear.weight.detach().split(sizes, dim=0):
            part = nn.Linear(w.shape[1], w.shape[0], bias=False)
            part.weight.data.copy_(w)
            self.parts.append(part)

    def forward(self, x):
        return torch.cat([p(x) for p in self.parts], dim=-1)


def tiny_phi3(seed):
    from transformers import Phi3Config, Phi3ForCausalLM

    cfg = Phi3Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    torch.manual_seed(seed)
    return Phi3ForCausalLM(cfg).eval()


def split(model):
    cfg = model.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.qkv_proj = Parts(attn.qkv_proj, [cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd,
                                              cfg.num_key_value_heads * hd])
        mlp.gate_up_proj = Parts(mlp.gate_up_proj, [cfg.intermediate_size, cfg.intermediate_size])
    return model


def run(seed, variant, reduction):
    gen = torch.Generator().manual_seed(100 + seed)
    calib, held = torch.randint(3, 256, (16, 64), generator=gen), torch.randint(3, 256, (4, 64), generator=gen)
    model = tiny_phi3(seed)
    with torch.no_grad():
        ref = model(held).logits
    if variant == "parts":
        model = split(model)
        with torch.no_grad():
            assert torch.allclose(model(held).logits, ref, atol=1e-5)
    model, report = compress(model, InterpolativeConfig(reduction=reduction), calibration=calib, progress=False)
    with torch.no_grad():
        out = model(held).logits
    return {
        "seed": seed, "variant": variant, "reduction": reduction, "params_after": report.params_after,
        "rel_logit_error": float(torch.linalg.norm(out - ref) / torch.linalg.norm(ref)),
        "ranks": {m.name.split("layers.", 1)[1]: m.rank for m in report.modules},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--reduction", type=float, default=0.2)
    ap.add_argument("--output", default="adapters_fused_parts.json", help="file name under benchmarks/results/")
    args = ap.parse_args()
    runs = [run(s, v, args.reduction) for s in range(args.seeds) for v in ("fused", "parts")]
    for v in ("fused", "parts"):
        errs = [r["rel_logit_error"] for r in runs if r["variant"] == v]
        print(f"{v:6s} relative logit error: mean {sum(errs) / len(errs):.4f}  per seed {[round(e, 4) for e in errs]}")
    _common.write_json(args.output, {"args": vars(args), "runs": runs})

if __name__ == "__main__":
    main()
