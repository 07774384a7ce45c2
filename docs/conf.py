"""Sphinx configuration for eqnorm's documentation (``scripts/dev.sh docs`` builds it into docs/_build/html)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import eqnorm  # noqa: E402

project = "eqnorm"
author = "the eqnorm developers"
copyright = "2026, the eqnorm developers"
version = release = eqnorm.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_generated"]
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]
suppress_warnings = ["myst.header"]  # included Markdown files start below the page's own title

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_numpy_docstring = True
napoleon_google_docstring = False
nitpicky = False

html_theme = "furo"
html_title = f"eqnorm {release}"


def _cli_help() -> None:
    """Write ``eqnorm-check --help`` for the CLI page, at a fixed width so that the page does not depend on a
    terminal."""
    from eqnorm.check._cli import parser

    os.environ["COLUMNS"] = "100"
    out = HERE / "_generated"
    out.mkdir(exist_ok=True)
    (out / "cli-help.txt").write_text(parser().format_help())


_cli_help()
