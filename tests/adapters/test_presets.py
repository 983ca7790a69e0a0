import pytest
import torch

from adapters import CalibrationError, InterpolativeConfig, count_parameters, llama, qwen2

from conftest import make_tiny_llama, save_char_tokenizer


def _tiny_phi3():
    from transformers import Phi3Config, Phi3ForCausalLM

    cfg = Phi3Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, pad_token_id=0)
    return Phi3ForCausalLM(cfg).eval()


def test_a_model_of_another_family_is_refused(calib_tokens):
    with pytest.raises(ValueError, match=r"adapters.llama compresses \('llama',\) models.*'phi3'"):
        llama.compress(_tiny_phi3(), calibration=calib_tokens, progress=False)
    with pytest.raises(ValueError, match="'llama'"):
        qwen2.compress(make_tiny_llama(), calibration=calib_tokens, progress=False)


def test_defaults_use_the_bundled_calibration_and_the_models_tokenizer(tmp_path):
    src = tmp_path / "tiny"
    make_tiny_llama().save_pretrained(src)
    save_char_tokenizer(src)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src)
    before = count_parameters(model)
    model, report = llama.compress(model, InterpolativeConfig(nsamples=2, seqlen=32), progress=False)
    assert report.options["calibration_tokens"] == 64
    assert report.target_params == (9 * before) // 10 or report.target_params == int(0.9 * before)
    assert count_parameters(model) == report.params_after <= report.target_params


def test_no_tokenizer_says_how_to_pass_one():
    with pytest.raises(CalibrationError, match=r"tokenizer=AutoTokenizer.from_pretrained"):
        llama.compress(make_tiny_llama(), progress=False)
    model = make_tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CalibrationError):  # per-layer widths: the plan needs the error curves
        llama.plan(model, uniform=False, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # the default (one MLP width, nothing else to allocate) is fixed by the budget: no calibration
    p = llama.plan(model, progress=False)
    assert len({m.rank for m in p.modules}) == 1 and p.params_after() <= p.target_params
