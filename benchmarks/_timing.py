"""The benchmarks' one timer: ``torch.utils.benchmark`` (what PyTorch users read), median seconds per call of a
function over blocked runs of at least ``min_run_time`` seconds, for interleaved rounds of several candidates."""

from __future__ import annotations

from collections.abc import Callable

import torch.utils.benchmark as tb


def seconds_per_call(fn: Callable[[], object], min_run_time: float = 0.02) -> float:
    """Median seconds per ``fn()`` call, by ``Timer.blocked_autorange`` (thread count as set by the caller)."""
    import torch

    timer = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median
