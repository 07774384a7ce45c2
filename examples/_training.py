"""Training and evaluation loops for the example scripts: AdamW, cosine decay, fixed seeds."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from _cli import progress
from _digits import Split


def train(
    model: torch.nn.Module,
    data: Split,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    desc: str = "train",
    weight_decay: float = 5e-4,
    after_step: Callable[[], None] | None = None,
) -> list[float]:
    """Train with AdamW and a cosine learning-rate decay to 0 over all steps (``CosineAnnealingLR``); returns the mean
    loss of every epoch.

    The last incomplete batch is dropped, so every step sees ``batch_size`` samples (batch norm's statistics then
    always come from exactly that many). ``after_step``, if given, is called after every optimizer step (pruning
    masks). A non-finite loss stops training early and is reported as ``nan`` for the remaining epochs.
    """
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = len(data) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {batch_size} exceeds the {len(data)} training samples")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    losses: list[float] = []
    model.train()
    bar = progress(range(total), desc=desc, total=total)
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=gen)
        running, count = 0.0, 0
        for step in range(steps_per_epoch):
            next(bar, None)
            idx = order[step * batch_size : (step + 1) * batch_size]
            loss = F.cross_entropy(model(data.x[idx]), data.y[idx])
            if not torch.isfinite(loss):
                return losses + [math.nan] * (epochs - epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step()
            running += loss.item()
            count += 1
        losses.append(running / count)
    return losses


@torch.no_grad()
def error_rate(model: torch.nn.Module, data: Split, batch_size: int = 256) -> float:
    """Fraction of misclassified samples, in eval mode (batch norm uses its running statistics)."""
    model.eval()
    wrong = 0
    for start in range(0, len(data), batch_size):
        logits = model(data.x[start : start + batch_size])
        wrong += int((logits.argmax(1) != data.y[start : start + batch_size]).sum())
    return wrong / len(data)


def train_and_test(model: torch.nn.Module, train_set: Split, test_set: Split, desc: str, **kwargs: Any) -> dict:
    """:func:`train`, then :func:`error_rate` on ``test_set``; prints one line and returns the final training loss,
    the test error and the seconds taken."""
    start = time.perf_counter()
    losses = train(model, train_set, desc=desc, **kwargs)
    error = error_rate(model, test_set)
    print(f"{desc}: train loss {losses[-1]:.3f}, test error {100 * error:.1f}%", flush=True)
    return {"final_train_loss": losses[-1], "test_error": error, "seconds": time.perf_counter() - start}
