"""Diagnostics behind docs/adapters.md (Methods): massive activations and per-matrix CUR errors.

On SmolLM2-135M with 16 x 512 calibration tokens (seed 0), printed as text:

1. per-token input norms of some linears (median, max, share of ``trace(X^T X)`` held by the
   first token of each window): the massive activations that motivate ``token_weighting``;
2. relative activation-weighted errors at fixed ranks of the whitened SVD, of one-sided column
   and row projections, and of the two-sided CUR with DEIM picks and with pivoted QR of ``A``;
3. the same CUR error with ``A = W H^{1/2}`` (symmetric root) against ``A = W L`` (Cholesky).

Usage::

    .venv/bin/python benchmarks/adapters_diagnostics.py > benchmarks/results/adapters_diagnostics.txt
"""

from __future__ import annotations

import sys

import scipy.linalg as sl
import torch

import _common  # noqa: E402  (puts the repository root on sys.path)
from adapters.calibration import LayerRunner, prepare_calibration, record_layer  # noqa: E402
from adapters.cli import SMOLLM2, load_model  # noqa: E402
from adapters.eval import load_wikitext2  # noqa: E402
from adapters.targets import find_targets  # noqa: E402
from curlinalg import deim  # noqa: E402
from curlinalg.metric import gram_svd, whitening  # noqa: E402



def _errors(A, rows, cols):
    C, Ra = A[:, cols], A[rows, :]
    nA = float(torch.linalg.norm(A))
    ec = float(torch.linalg.norm(A - C @ (torch.linalg.pinv(C) @ A))) / nA
    er = float(torch.linalg.norm(A - (A @ torch.linalg.pinv(Ra)) @ Ra)) / nA
    U = torch.linalg.pinv(C) @ A @ torch.linalg.pinv(Ra)
    return ec, er, float(torch.linalg.norm(A - C @ U @ Ra)) / nA


def _cur(A, r):
    P, Q, _ = gram_svd(A, r)
    return _errors(A, deim(P), deim(Q))[2]


def _massive_activations(model, ids):
    acts = {}
    hooks = []
    for i in (1, 5, 11, 20, 28):
        layer = model.model.layers[i]
        for name, mod in (("q_proj", layer.self_attn.q_proj), ("o_proj", layer.self_attn.o_proj),
                          ("down_proj", layer.mlp.down_proj)):
            hooks.append(mod.register_forward_hook(
                lambda m, inp, out, key=f"layer {i:2d} {name}": acts.__setitem__(key, inp[0].detach())))
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    for key, x in acts.items():
        n = x.norm(dim=-1)
        sq = n**2
        print(f"{key:20s} input norm median {float(n.median()):8.2f} max {float(n.max()):9.2f} "
              f"first-token share of trace(X^T X) {float(sq[:, 0].sum() / sq.sum()):.3f}", flush=True)


def main() -> int:
    print("command:", _common.command())
    model, tok = load_model(SMOLLM2)
    data = load_wikitext2(tokenizer=tok)
    batches = prepare_calibration(data.calibration_text, tokenizer=tok, nsamples=16, seqlen=512,
                                  batch_size=8, seed=0)
    _massive_activations(model, batches[0])
    runner = LayerRunner(model, batches, progress=False)
    hidden = runner.hidden
    for i in range(21):
        found = find_targets(model, layers=[i])
        stats, out = record_layer(runner, i, hidden, {n: m for n, (_, m) in found.items()})
        if i in (0, 5, 20):
            for n, (_, lin) in found.items():
                W = lin.weight.detach().double()
                H = whitening(stats[n].gram, ridge=1e-6).shifted_gram()
                vals, vecs = torch.linalg.eigh(H)
                roots = {"sqrt": (vecs * vals.clamp_min(0).sqrt()) @ vecs.T, "chol": torch.linalg.cholesky(H)}
                e = {k: _cur(W @ S, 64) for k, S in roots.items()}
                print(f"{n:34s} r=64 CUR error  H^1/2 {e['sqrt']:.4f}  Cholesky {e['chol']:.4f}", flush=True)
                if i == 5:
                    A = W @ roots["chol"]
                    s = torch.linalg.svdvals(A)
                    for r in (48, 128):
                        svd = float(torch.sqrt((s[r:] ** 2).sum() / (s ** 2).sum()))
                        P, Q, _ = gram_svd(A, r)
                        d = _errors(A, deim(P), deim(Q))
                        _, _, pc = sl.qr(A.numpy(), pivoting=True, mode="economic")
                        _, _, pr = sl.qr(A.numpy().T, pivoting=True, mode="economic")
                        q = _errors(A, torch.as_tensor(pr[:r]), torch.as_tensor(pc[:r]))
                        print(f"{n:34s} r={r:3d} svd {svd:.3f} | DEIM C {d[0]:.3f} R {d[1]:.3f} CUR {d[2]:.3f}"
                              f" | pivoted QR C {q[0]:.3f} R {q[1]:.3f} CUR {q[2]:.3f}", flush=True)
        hidden = out
    return 0


if __name__ == "__main__":
    sys.exit(main())
