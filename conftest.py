"""Collection rules for the whole repository: tests and modules of an adapter are skipped where its library is
missing (the GPU machine, for instance, has e3nn but no escnn)."""

import importlib.util

collect_ignore_glob = []
if importlib.util.find_spec("escnn") is None:
    collect_ignore_glob += ["tests/escnn/*", "tests/check/*", "eqnorm/escnn/*", "eqnorm/check/*"]
if importlib.util.find_spec("e3nn") is None:
    collect_ignore_glob += ["tests/e3nn/*", "eqnorm/e3nn/*"]


def pytest_configure(config) -> None:
    """A checkout without the compiled kernels would pass on the pure-PyTorch kernels and skip every op test: stop
    instead, saying how to build them, unless the pure-PyTorch kernels are chosen on purpose."""
    import os

    import pytest

    if os.environ.get("EQNORM_BACKEND") == "torch":
        return
    import eqnorm

    if eqnorm.kernel_backend("cpu") == "torch":
        pytest.exit(
            "eqnorm's compiled kernels are not built in this checkout: run `scripts/dev.sh test` (it builds them into "
            ".venv), or `pip install --no-build-isolation -e .` beside your torch, or set EQNORM_BACKEND=torch to "
            "test the pure-PyTorch kernels alone",
            returncode=4,
        )
