"""Optional libraries: whether escnn can be imported, and what to install when it cannot."""

from __future__ import annotations

import importlib.util

ESCNN_EXTRA = "pip install 'eqnorm-layers[escnn]' (escnn's py3nj compiles Fortran: install gfortran first)"


def escnn_available() -> bool:
    """True when ``import escnn`` can find escnn (a blocked or absent module counts as missing)."""
    try:
        return importlib.util.find_spec("escnn") is not None
    except (ImportError, ValueError):
        return False
