"""Every docstring example of adapters runs and prints what it shows (model-level ones are skipped)."""

import doctest
import importlib
import pkgutil

import pytest

import adapters

#: Modules that import an optional dependency: module -> the package it needs.
OPTIONAL = {"adapters.peft": "peft"}
MODULES = sorted(m.name for m in pkgutil.walk_packages(adapters.__path__, prefix="adapters.") if m.name != "adapters.__main__")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name])
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
