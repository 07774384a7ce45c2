"""Collection rules for the whole repository: escnn-based tests and modules are skipped where escnn is missing."""

import importlib.util

collect_ignore_glob = (
    [] if importlib.util.find_spec("escnn") else ["tests/escnn/*", "tests/check/*", "eqnorm/escnn/*", "eqnorm/check/*"]
)
