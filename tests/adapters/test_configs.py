import json

import pytest

from adapters.configs import (
    CONFIGS,
    REFIT_DEFAULT,
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
    assert set(CONFIGS) == {"interpolative", "cur", "curing", "svd", "structured"}
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
        (lambda: InterpolativeConfig(sequential=False, mix=0.5), r"mix=0.5 only acts on the sequential refit.*sequential=True"),
        (lambda: InterpolativeConfig(sequential=False, refit_ridge=1e-3), "refit_ridge=0.001 only acts on the sequential refit"),
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


def test_the_interpolative_default_is_the_refit():
    """Version 3: PIFA's "M" refit on by default; without ``sequential`` its options read as off."""
    cfg = InterpolativeConfig()
    assert {k: getattr(cfg, k) for k in REFIT_DEFAULT} == REFIT_DEFAULT == {
        "sequential": True, "mix": 0.75, "refit_ridge": 1e-2, "passes": 1}
    assert cfg.to_dict()["version"] == 3
    one_pass = InterpolativeConfig(sequential=False)
    assert (one_pass.mix, one_pass.refit_ridge, one_pass.passes) == (0.0, 0.0, 1)  # says what runs
    assert one_pass == InterpolativeConfig(sequential=False, mix=0.0, refit_ridge=0.0)
    assert CURConfig().mix == 0.0 and CURConfig.version == 2  # the C U R form's defaults did not move


@pytest.mark.parametrize("version", [1, 2])
def test_earlier_versions_read_with_their_defaults(version):
    """A dictionary of version 1 (before mix/refit_ridge/passes) or 2 (refit off by default) reads
    as what that version did for every field it does not hold."""
    for cls in (InterpolativeConfig, CURConfig):
        data = cls(reduction=0.2, sequential=False).to_dict()
        data["version"] = version
        missing = ("mix", "refit_ridge", "passes") if version == 1 else ("mix", "refit_ridge", "passes", "sequential")
        for name in missing:
            del data[name]
        if cls is CURConfig and version == 2:
            continue  # CURConfig is still version 2: a v2 dict of it reads with today's defaults
        back = config_from_dict(data)
        assert back == cls(reduction=0.2, sequential=False)
        assert (back.sequential, back.mix, back.refit_ridge, back.passes) == (False, 0.0, 0.0, 1)
        assert back.to_dict()["version"] == cls.version
    full = InterpolativeConfig(reduction=0.2, sequential=True, mix=0.5).to_dict() | {"version": version}
    assert config_from_dict(full) == InterpolativeConfig(reduction=0.2, sequential=True, mix=0.5)


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
