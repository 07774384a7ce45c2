"""The API reference lists every public name, and every public layer and function states its formula."""

import inspect
import re
from pathlib import Path

import pytest

import eqnorm
import eqnorm.functional

API = (Path(__file__).resolve().parents[1] / "docs" / "api.rst").read_text()


def public_modules():
    escnn = pytest.importorskip("eqnorm.escnn")
    e3nn = pytest.importorskip("eqnorm.e3nn")
    import eqnorm.check

    return [eqnorm, escnn, e3nn, eqnorm.functional, eqnorm.check]


def test_every_public_name_is_in_the_api_reference():
    missing = []
    for module in public_modules():
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                found = f"automodule:: {obj.__name__}" in API
            else:
                found = f".{name}\n" in API or f" {name}," in API or f" {name}\n" in API
            if not found:
                missing.append(f"{module.__name__}.{name}")
    assert not missing, f"not in docs/api.rst: {missing}"


MATH_FREE = {
    "kernel_backend",
    "grid_elements",
    "sample_elements",
    "random_input",
    "CheckResult",
    "CheckSettings",
    "Measurement",
    "Replacement",
}


def test_every_layer_and_function_states_its_formula():
    """Layers, functions and checks carry a formula (``:math:`` or ``.. math::``); the few listed in ``MATH_FREE``
    compute nothing that a formula would say better than a sentence."""
    lacking = []
    for module in public_modules():
        for name in module.__all__:
            obj = getattr(module, name)
            if name in MATH_FREE or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            doc = inspect.getdoc(obj) or ""
            if ":math:" not in doc and ".. math::" not in doc:
                lacking.append(f"{module.__name__}.{name}")
    assert not lacking, f"docstrings without a formula: {lacking}"


def test_version_matches_the_package_metadata_and_the_changelog():
    root = Path(__file__).resolve().parents[1]
    declared = re.search(r'^version = "([^"]+)"', (root / "pyproject.toml").read_text(), re.M)
    assert declared is not None and eqnorm.__version__ == declared.group(1)
    assert f"## [{eqnorm.__version__}]" in (root / "CHANGELOG.md").read_text()
