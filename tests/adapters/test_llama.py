import pytest

from adapters import count_parameters, llama

from conftest import make_tiny_llama


def test_preset_default_budget(calib_tokens, eval_tokens):
    model = make_tiny_llama()
    before = count_parameters(model)
    model, report = llama.compress(model, calibration=calib_tokens, progress=False)
    assert report.method == "structured"
    assert model.config.intermediate_size < 64  # a stock Llama of a smaller width
    tuned, _ = llama.compress(make_tiny_llama(), calibration=calib_tokens, progress=False, width_multiple=8)
    assert tuned.config.intermediate_size % 8 == 0  # keyword options are the default config's fields
    assert report.target_params == int(0.9 * before) or report.target_params == (before * 9) // 10
    assert count_parameters(model) == report.params_after <= report.target_params
    assert {(m.unit, m.name.rsplit(".", 1)[-1]) for m in report.modules} == {("mlp", "mlp")}


def test_preset_curing_defaults(calib_tokens):
    model = make_tiny_llama(layers=3)
    model, report = llama.compress(model, calibration=calib_tokens, method="curing", n_layers=2, progress=False)
    assert len(report.layers) == 2
    assert {m.name.rsplit(".", 1)[-1] for m in report.modules} == {"q_proj", "k_proj", "gate_proj"}
    assert len(report.angular_distances) == 3


def test_preset_rejects_unknown_targets(calib_tokens):
    with pytest.raises(ValueError, match="fixes its target names"):
        llama.compress(make_tiny_llama(), calibration=calib_tokens, targets=["fc1"], progress=False)
