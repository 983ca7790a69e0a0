"""benchmarks/heal_lora_cpu.py's training loop on a tiny compressed model: LoRA and core-only
healing see the same batches and train only their own parameters."""

import copy
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

from adapters import compress  # noqa: E402

from conftest import make_tiny_llama  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import heal_lora_cpu  # noqa: E402


def test_core_and_lora_runs_share_data_and_schedule_and_train_only_their_parameters(calib_tokens):
    teacher = make_tiny_llama(3)
    compressed, _ = compress(make_tiny_llama(3), calibration=calib_tokens, reduction=0.2, progress=False)
    ids = torch.randint(3, 128, (2000,), generator=torch.Generator().manual_seed(4))
    seen = {}

    def ppl(model, step):
        return float(torch.exp(model(input_ids=ids[None, :64], labels=ids[None, :64]).loss))

    runs = {}
    for run in ("core", "lora"):
        model = copy.deepcopy(compressed)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        if run == "core":
            params = heal_lora_cpu.core_params(model)
            lr, relative = 1e-2, True
        else:
            model, params = heal_lora_cpu.with_lora(model, r=2, alpha=4, targets="all-linear", seed=0)
            lr, relative = 1e-2, False
        batches = []
        hook = model.get_input_embeddings().register_forward_pre_hook(
            lambda m, a, batches=batches: batches.append(a[0].clone()) if a[0].shape[-1] == 16 else None)
        res = heal_lora_cpu.train(model, teacher, ids, params, steps=4, lr=lr, relative_lr=relative, batch_size=2,
                                  seqlen=16, seed=0, eval_cb=ppl, eval_every=2)
        hook.remove()
        seen[run] = batches
        runs[run] = res
        assert [s for s, _ in res["curve"]] == [0, 2, 4] and len(res["losses"]) == 4 and res["tokens"] == 4 * 2 * 16
        assert res["trainable_params"] == sum(p.numel() for p in params.values()) > 0
        assert res["curve"][-1][1] != res["curve"][0][1]
        trained = {n.replace("base_model.model.", "").replace(".base_layer", "") for n in params}
        for name, p in model.named_parameters():
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            if key in before and key not in trained:
                assert torch.equal(p, before[key]), (run, name)
    assert len(seen["core"]) == len(seen["lora"]) == 4
    assert all(torch.equal(a, b) for a, b in zip(seen["core"], seen["lora"]))  # the same windows, in order
    assert runs["core"]["curve"][0] == runs["lora"]["curve"][0]  # both start from the compressed model
