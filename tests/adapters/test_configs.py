import dataclasses
import json

import pytest

from adapters.configs import (
    CONFIGS,
    CURConfig,
    CURingConfig,
    InterpolativeConfig,
    SVDConfig,
    config_from_dict,
    config_from_options,
)

EXAMPLES = [
    InterpolativeConfig(),
    InterpolativeConfig(reduction=0.25, targets="all-linear", exclude=("down",), layers=(0, 2),
                        overrides={"model.layers.0.mlp.up_proj": 4, "o_proj": 0.5}, selector="maxvol"),
    CURConfig(target_params=1000, allocation="cur", sequential=False, token_weighting="clip"),
    InterpolativeConfig(reduction=0.2, sequential=True, mix=0.75, refit_ridge=1e-2, passes=2),
    CURConfig(reduction=0.2, mix=1, passes=3),
    CURingConfig(rank=5, n_layers=2),
    SVDConfig(kind="plain", rank=3),
    InterpolativeConfig(reduction=0.2, max_rank_fraction=0.75, rank_multiple=16),
]


@pytest.mark.parametrize("config", EXAMPLES, ids=lambda c: c.method)
def test_json_round_trip(config):
    data = json.loads(config.to_json())
    assert data["method"] == config.method and data["version"] == type(config).version
    back = config_from_dict(data)
    assert back == config and type(back) is type(config)


def test_every_method_is_registered_by_its_name():
    assert set(CONFIGS) == {"interpolative", "cur", "curing", "svd"}
    assert all(cls.method == name for name, cls in CONFIGS.items())


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: InterpolativeConfig(reduction=1.5), "reduction must lie in"),
        (lambda: InterpolativeConfig(reduction=0.1, target_params=10), "not both"),
        (lambda: InterpolativeConfig(rank=0), "rank must be a positive int"),
        (lambda: InterpolativeConfig(rank=2, reduction=0.1), "cannot be combined"),
        (lambda: InterpolativeConfig(selector="random"), "selector must be one of"),
        (lambda: InterpolativeConfig(overrides={"q": 0}), r"overrides\['q'\]"),
        (lambda: InterpolativeConfig(overrides={"q": 1.5}), r"overrides\['q'\]"),
        (lambda: SVDConfig(kind="nope"), "kind must be one of"),
        (lambda: InterpolativeConfig(max_rank_fraction=0.0), r"max_rank_fraction must be a float in \(0, 1\]"),
        (lambda: InterpolativeConfig(max_rank_fraction=1.5), r"max_rank_fraction must be a float in \(0, 1\]"),
        (lambda: InterpolativeConfig(rank_multiple=0), "rank_multiple must be a positive int"),
        (lambda: InterpolativeConfig.with_options(n_layers=3), r"unknown option\(s\) \['n_layers'\]"),
        (lambda: config_from_dict({"method": "tucker"}), "config method must be one of"),
        (lambda: config_from_dict({**InterpolativeConfig().to_dict(), "version": 99}), "version 99"),
        (lambda: InterpolativeConfig(sequential=True, mix=1.5), r"mix must lie in \[0, 1\]"),
        (lambda: InterpolativeConfig(sequential=True, mix=-0.1), r"mix must lie in \[0, 1\]"),
        (lambda: InterpolativeConfig(sequential=True, refit_ridge=-1e-3), "refit_ridge must be a finite"),
        (lambda: InterpolativeConfig(sequential=True, refit_ridge=float("inf")), "refit_ridge must be a finite"),
        (lambda: InterpolativeConfig(sequential=True, passes=0), "passes must be an int >= 1"),
        (lambda: InterpolativeConfig(mix=0.75), r"mix=0.75 only acts on the sequential refit.*sequential=True"),
        (lambda: InterpolativeConfig(refit_ridge=1e-2), "refit_ridge=0.01 only acts on the sequential refit"),
        (lambda: CURConfig(sequential=False, passes=2), "passes=2 only acts on the sequential refit"),
    ],
)
def test_bad_values_raise_when_built(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("options", [dict(mix="0.5"), dict(mix=True), dict(refit_ridge=None), dict(passes=2.0),
                                     dict(passes=True), dict(sequential="yes")])
def test_refit_options_of_the_wrong_kind_raise(options):
    with pytest.raises(TypeError, match="must be"):
        InterpolativeConfig(**{"sequential": True, **options})


def test_refit_options_are_stored_as_given_kinds():
    cfg = InterpolativeConfig(sequential=True, mix=1, refit_ridge=0)
    assert type(cfg.mix) is float and type(cfg.refit_ridge) is float
    assert cfg == InterpolativeConfig(sequential=True, mix=1.0, refit_ridge=0.0)


def test_version_1_configs_read_with_the_refit_off():
    """A version-1 dictionary (before mix/refit_ridge/passes) reads as what version 1 did, and
    stays readable when the field defaults change."""
    for cls in (InterpolativeConfig, CURConfig):
        data = cls(reduction=0.2).to_dict()
        data["version"] = 1
        for name in ("mix", "refit_ridge", "passes"):
            del data[name]
        back = config_from_dict(data)
        assert back == cls(reduction=0.2) and (back.mix, back.refit_ridge, back.passes) == (0.0, 0.0, 1)
        assert back.to_dict()["version"] == 2
    flipped = dataclasses.make_dataclass(
        "Flipped", [("sequential", bool, True), ("mix", float, 0.75), ("passes", int, 2)],
        bases=(InterpolativeConfig,), frozen=True)
    assert flipped(sequential=False).mix == 0.75  # a default is never "set without sequential"
    old = {"method": "interpolative", "version": 1, "reduction": 0.1, "sequential": False}
    assert flipped.from_dict(old).mix == 0.0
    with pytest.raises(ValueError, match="mix=0.5 only acts"):
        flipped(sequential=False, mix=0.5)


def test_earlier_keyword_options_map_onto_configs():
    assert config_from_options() == InterpolativeConfig()
    assert config_from_options(form="cur", reduction=0.2) == CURConfig(reduction=0.2)
    assert config_from_options(form="cur", sequential=None).sequential is True
    assert config_from_options(method="curing", rank=3) == CURingConfig(rank=3)
    for kwargs, match in [(dict(method="nope"), "method must be one of"), (dict(form="svd"), "form must be one of"),
                          (dict(method="curing", form="interpolative"), "form must be one of"),
                          (dict(method="curing", reduction=0.1), "unknown option")]:
        with pytest.raises(ValueError, match=match):
            config_from_options(**kwargs)


def test_dicts_written_before_the_rank_options_load_with_their_defaults():
    old = {k: v for k, v in InterpolativeConfig(reduction=0.2).to_dict().items()
           if k not in ("max_rank_fraction", "rank_multiple")}
    cfg = config_from_dict(old)
    assert (cfg.max_rank_fraction, cfg.rank_multiple) == (1.0, 1)
    assert cfg == InterpolativeConfig(reduction=0.2)


def test_budget_target():
    assert InterpolativeConfig().target(1000) == 900
    assert InterpolativeConfig(reduction=0.25).target(1001) == 750
    assert InterpolativeConfig(target_params=77).target(1000) == 77
    assert InterpolativeConfig(rank=3).target(1000) is None
