"""adapters.peft: PEFT's LoRA on the factored layers of a compressed model (issue 24, item 2)."""

import json

import pytest
import torch

peft = pytest.importorskip("peft")

from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

from adapters import CURConfig, InterpolativeConfig, StructuredConfig, SVDConfig, compress, merge  # noqa: E402
from adapters.layer import SAVED_LINEARS, TRANSPOSED_FROM  # noqa: E402
from adapters.peft import FactoredLoraLinear, all_linear_names, register  # noqa: E402

from conftest import make_tiny_llama  # noqa: E402

CALIB = torch.randint(3, 128, (16, 32), generator=torch.Generator().manual_seed(1))
TOKENS = torch.randint(3, 128, (2, 24), generator=torch.Generator().manual_seed(2))
CONFIGS = {
    "interpolative": lambda: InterpolativeConfig(reduction=0.3),
    "cur": lambda: CURConfig(reduction=0.3),
    "svd": lambda: SVDConfig(reduction=0.3),
    "structured-vo": lambda: StructuredConfig(reduction=0.1, units=("vo",)),
}


def _compressed(form="interpolative"):
    model, _ = compress(make_tiny_llama(layers=3), CONFIGS[form](), calibration=CALIB, progress=False)
    return model


def _factored(model):
    return {n for n, m in model.named_modules() if isinstance(m, SAVED_LINEARS)}


def _randomise_lora_b(model, seed=0, scale=0.2):
    """PEFT starts ``B`` at zero (the update is 0); a nonzero ``B`` makes every check able to fail."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)


def _logits(model, tokens=TOKENS):
    with torch.no_grad():
        return model(input_ids=tokens).logits


def test_without_register_peft_refuses_a_factored_target_and_all_linear_skips_them():
    """The finding: PEFT alone does not know the factored layers."""
    model = _compressed()
    assert isinstance(model.model.layers[0].self_attn.q_proj, SAVED_LINEARS)
    with pytest.raises(ValueError, match="is not supported"):
        get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"]))
    wrapped = get_peft_model(_compressed(), LoraConfig(r=4, target_modules="all-linear"))
    assert _factored(wrapped) and not any(
        isinstance(m, FactoredLoraLinear) for m in wrapped.modules())  # factored layers left unadapted


@pytest.mark.parametrize("form", list(CONFIGS))
def test_all_linear_reaches_every_factored_and_dense_linear_but_the_head(form):
    model = _compressed(form)
    factored = _factored(model)
    dense = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    assert factored and all_linear_names(model) == factored | dense
    wrapped = get_peft_model(model, register(LoraConfig(r=2, target_modules="all-linear"), model=model))
    adapted = {n.removeprefix("base_model.model.") for n, m in wrapped.named_modules() if hasattr(m, "lora_A")}
    assert adapted == factored | dense
    assert all(isinstance(wrapped.get_submodule(f"base_model.model.{n}"), FactoredLoraLinear) for n in factored)


def test_training_moves_only_the_lora_parameters_of_factored_targets():
    model = _compressed()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    wrapped = get_peft_model(model, register(LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "gate_proj"])))
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert all(("q_proj" in n or "gate_proj" in n) for n in trainable)
    opt = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2)
    wrapped.train()
    losses = []
    for _ in range(5):
        loss = wrapped(input_ids=TOKENS, labels=TOKENS).loss
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for n, p in wrapped.named_parameters() if n not in trainable)
        assert all(wrapped.get_parameter(n).grad is not None for n in trainable)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for name, p in wrapped.base_model.model.named_parameters():
        key = name.replace(".base_layer.", ".")
        if key in frozen:
            assert torch.equal(p, frozen[key]), name  # the factors and everything else untouched


def test_adapter_saved_and_loaded_onto_a_reloaded_checkpoint_gives_the_same_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    model = _compressed()
    model.save_pretrained(tmp_path / "compressed")
    wrapped = get_peft_model(model, register(LoraConfig(r=4, target_modules="all-linear"), model=model))
    _randomise_lora_b(wrapped)
    wrapped.eval()
    before = _logits(wrapped)
    wrapped.save_pretrained(tmp_path / "lora")
    saved = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert set(saved["target_modules"]) >= {"q_proj", "gate_proj"}  # the expanded names are recorded
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "compressed")
    config = register(LoraConfig.from_pretrained(tmp_path / "lora"))
    loaded = PeftModel.from_pretrained(base, tmp_path / "lora", config=config)
    assert torch.equal(_logits(loaded), before)
    with pytest.raises(ValueError, match="is not supported"):  # the registration is not saved
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "compressed"), tmp_path / "lora")


def test_merge_and_unload_folds_into_dense_layers_with_the_adapted_logits(tmp_path):
    """In float64 the merged and unmerged models differ by rounding only: sums of at most
    ``n + r + k < 200`` terms through 3 blocks, of order ``200 eps |logit| ~ 1e-13 |logit|``;
    allowed ``1e-10 |logit|``. A merge that dropped or mis-scaled the update would be off by
    the update's own effect, checked below to exceed ``1e-3``."""
    from transformers import AutoModelForCausalLM

    model = _compressed().double()
    assert any(getattr(model.get_submodule(f"model.layers.{i}.mlp.gate_proj"), "feature_major_output", False)
               for i in range(3))
    plain = _logits(model)
    wrapped = get_peft_model(model, register(LoraConfig(r=4, lora_alpha=8,
                                                        target_modules=["q_proj", "gate_proj", "down_proj"])))
    _randomise_lora_b(wrapped)
    adapted = _logits(wrapped)
    long = torch.randint(3, 128, (1, TRANSPOSED_FROM + 8), generator=torch.Generator().manual_seed(3))
    adapted_long = _logits(wrapped, long)  # gate_proj returns its transposed view there
    assert float((adapted - plain).abs().max()) > 1e-3
    merged = wrapped.merge_and_unload()
    for i in range(3):
        for name in ("self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj"):
            layer = merged.get_submodule(f"model.layers.{i}.{name}")
            assert type(layer) is torch.nn.Linear and layer.weight.dtype == torch.float64
    assert _factored(merged)  # layers without an adapter stay factored
    got = _logits(merged)
    torch.testing.assert_close(got, adapted, rtol=0, atol=1e-10 * float(adapted.abs().max()))
    torch.testing.assert_close(_logits(merged, long), adapted_long, rtol=0, atol=1e-10 * float(adapted_long.abs().max()))
    merged.save_pretrained(tmp_path / "partly")  # the record lists the layers still factored
    record = json.loads((tmp_path / "partly" / "config.json").read_text())["quantization_config"]
    assert set(record["modules"]) == _factored(merged)
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "partly", dtype=torch.float64)), got)


def test_merging_every_factored_layer_then_merge_leaves_a_plain_checkpoint(tmp_path):
    """After ``merge_and_unload`` on all-linear no layer is factored, but the model still carries
    the compression record; ``adapters.merge`` removes it (it used to keep it: nothing to fold)."""
    model = _compressed()
    wrapped = get_peft_model(model, register(LoraConfig(r=2, target_modules="all-linear"), model=model))
    merged = wrapped.merge_and_unload()
    assert not _factored(merged) and getattr(merged.config, "quantization_config", None) is not None
    merge(merged).save_pretrained(tmp_path / "plain")
    assert "quantization_config" not in json.loads((tmp_path / "plain" / "config.json").read_text())


def test_unload_without_merge_gives_back_the_factored_layers():
    model = _compressed()
    before = _logits(model)
    wrapped = get_peft_model(model, register(LoraConfig(r=2, target_modules=["q_proj"])))
    _randomise_lora_b(wrapped)
    back = wrapped.unload()
    assert all(isinstance(back.model.layers[i].self_attn.q_proj, SAVED_LINEARS) for i in range(3))
    assert torch.equal(_logits(back), before)


@pytest.mark.parametrize("options, match", [
    (dict(use_dora=True), "use_dora"),
    (dict(init_lora_weights="pissa"), "init_lora_weights='pissa'"),
    (dict(init_lora_weights="olora"), "init_lora_weights='olora'"),
])
def test_variants_that_read_the_dense_weight_are_refused_by_name(options, match):
    with pytest.raises(NotImplementedError, match=match):
        get_peft_model(_compressed(), register(LoraConfig(r=2, target_modules=["q_proj"], **options)))


def test_in_place_merge_is_refused_with_the_way_out():
    wrapped = get_peft_model(_compressed(), register(LoraConfig(r=2, target_modules=["q_proj"])))
    with pytest.raises(NotImplementedError, match="merge_and_unload"):
        wrapped.merge_adapter()


def test_register_checks_its_arguments():
    with pytest.raises(ValueError, match="pass the model"):
        register(LoraConfig(target_modules="all-linear"))
    with pytest.raises(TypeError, match="LoraConfig"):
        register(peft.IA3Config(target_modules=["q_proj"]))


@pytest.mark.parametrize("autocast", [True, False])
def test_adapter_dtype_is_chosen_as_for_a_dense_layer(autocast):
    """PEFT places an adapter in its base layer's dtype (read from ``weight``, which a factored
    layer lacks; it used to stay float32), then upcasts half-precision adapters to float32
    unless ``autocast_adapter_dtype=False``: the factored ``q_proj`` gets what the dense
    ``lm_head`` gets."""
    model = _compressed().to(torch.bfloat16)
    wrapped = get_peft_model(model, register(LoraConfig(r=2, target_modules=["q_proj", "lm_head"])),
                             autocast_adapter_dtype=autocast)
    inner = wrapped.base_model.model
    factored, dense = inner.model.layers[0].self_attn.q_proj, inner.lm_head
    assert isinstance(factored, FactoredLoraLinear)
    want = torch.float32 if autocast else torch.bfloat16
    assert factored.lora_A["default"].weight.dtype == dense.lora_A["default"].weight.dtype == want
    assert _logits(wrapped).dtype == torch.bfloat16
