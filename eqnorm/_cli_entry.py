"""The ``eqnorm-check`` command's entry point: says what to install when escnn is missing, before importing it."""

from __future__ import annotations

import sys

from ._optional import ESCNN_EXTRA, escnn_available


def main() -> int:
    """Run ``eqnorm-check``; exit status 2 with a message naming the extra when escnn is not installed."""
    if not escnn_available():
        print(
            f"eqnorm-check: escnn is not installed, and the checker builds on its groups: {ESCNN_EXTRA}",
            file=sys.stderr,
        )
        return 2
    from .check._cli import main as run

    return run()
