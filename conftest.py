"""Collection rules for the whole repository: tests and modules of an adapter are skipped where its library is
missing (the GPU machine, for instance, has e3nn but no escnn)."""

import importlib.util

collect_ignore_glob = []
if importlib.util.find_spec("escnn") is None:
    collect_ignore_glob += ["tests/escnn/*", "tests/check/*", "eqnorm/escnn/*", "eqnorm/check/*"]
if importlib.util.find_spec("e3nn") is None:
    collect_ignore_glob += ["tests/e3nn/*", "eqnorm/e3nn/*"]
