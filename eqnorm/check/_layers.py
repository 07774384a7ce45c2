r"""Per-layer equivariance checks: every escnn ``EquivariantModule`` (``in_type``/``out_type``) and every e3nn module
(``irreps_in``/``irreps_out``) inside a model is checked on its own, twice: on random inputs of its input type, and
on the features it actually receives when the model runs (captured by forward hooks). A plain ``torch.nn`` module
that an escnn module applies to a ``GeometricTensor``'s tensor is checked against its escnn parent's field type.

A whole model can pass within rounding while one of its layers breaks equivariance by far less than the model's own
float32 error: checked alone, a pointwise layer gets the exact fiber check, which a model that mixes positions
cannot have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._checks import CheckResult, CheckSettings, check_e3nn, check_escnn

__all__ = ["LayerReport", "check_layers"]


@dataclass
class LayerReport:
    """The checks of one submodule: its name in the model, its type, and the worst relative error of a judged check."""

    name: str
    kind: str
    results: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def status(self) -> str:
        """``FAIL``, ``ok``, or ``skipped`` where nothing was judged."""
        if not self.passed:
            return "FAIL"
        judged = any(m.passed is not None for r in self.results for m in r.measurements)
        return "ok" if judged else "skipped"

    @property
    def worst(self) -> float:
        errors = [m.rel_error for r in self.results for m in r.measurements if m.passed is not None]
        return max(errors, default=0.0)


def _is_escnn(m: Any) -> bool:
    return hasattr(m, "in_type") and hasattr(m, "out_type")


def _is_e3nn(m: Any) -> bool:
    return hasattr(m, "irreps_in") and hasattr(m, "irreps_out") and not _is_escnn(m)


def _tensor(value: Any) -> torch.Tensor | None:
    value = value[0] if isinstance(value, tuple) and value else value
    value = getattr(value, "tensor", value)
    return value.detach() if isinstance(value, torch.Tensor) else None


class _OnFieldType(torch.nn.Module):
    """A plain module seen as an escnn module mapping ``field_type`` to itself, as its escnn parent claims."""

    def __init__(self, inner: torch.nn.Module, field_type: Any) -> None:
        super().__init__()
        self.inner, self.in_type, self.out_type = inner, field_type, field_type

    def forward(self, x: Any) -> Any:
        from escnn.nn import GeometricTensor

        return GeometricTensor(self.inner(x.tensor), self.out_type)


def _candidates(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, Any]]:
    """(name, module, escnn parent's field type or None) for every submodule worth checking alone."""
    found = []
    # a WholeModel's view is no escnn parent: the plain layers of its head do not act on its input's fields
    parents: dict[str, Any] = {"": model if _is_escnn(model) and not hasattr(model, "is_whole_model") else None}
    for name, module in model.named_modules():
        if not name:
            continue
        parent = parents[name.rpartition(".")[0]]
        parents[name] = module if _is_escnn(module) else parent
        if _is_escnn(module) or _is_e3nn(module):
            found.append((name, module, None))
        elif parent is not None and not list(module.children()):
            found.append((name, module, parent.in_type))
    return found


def check_layers(
    model: torch.nn.Module,
    run_model: Callable[[], Any],
    settings: CheckSettings,
) -> list[LayerReport]:
    """Check each submodule of ``model`` alone (see the module docstring); ``run_model()`` runs the model once on its
    input, in the current mode, so that the hooks capture what each submodule receives. Reports come in the order in
    which the model calls the submodules. ``run_model`` may change the model's flags: the caller puts them back (the
    CLI runs this inside :func:`~eqnorm.check._checks.restored`)."""
    candidates = _candidates(model)
    captured: dict[str, tuple[torch.Tensor, torch.Tensor, dict[str, Any]]] = {}
    order: list[str] = []

    def called(name: str) -> Callable[..., None]:
        def note(_module: Any, _inputs: Any) -> None:
            if name not in order:  # the order of calls, so that a container comes before what it holds
                order.append(name)

        return note

    def hook(name: str) -> Callable[..., None]:
        def save(_module: Any, inputs: Any, kwargs: dict[str, Any], output: Any) -> None:
            x, y = _tensor(inputs), _tensor(output)
            if x is not None and y is not None and name not in captured:
                captured[name] = (x, y, kwargs)

        return save

    handles = [m.register_forward_pre_hook(called(name)) for name, m, _ in candidates]
    handles += [m.register_forward_hook(hook(name), with_kwargs=True) for name, m, _ in candidates]
    try:
        with torch.no_grad():
            run_model()
    finally:
        for h in handles:
            h.remove()
    reports = []
    by_name = {name: (module, field_type) for name, module, field_type in candidates}
    for name in order + [n for n, _, _ in candidates if n not in order]:
        module, field_type = by_name[name]
        kind = type(module).__name__
        if name not in captured:
            if any(name.startswith(f"{outer}.") for outer in captured):
                continue  # the internals of a layer checked as a whole (an escnn convolution's basis expansion)
            note = "not called alone by the model's forward (or not on one tensor): nothing recorded to check it on"
            reports.append(LayerReport(name, kind, [CheckResult("recorded input", "", note=note, layer=name)]))
            continue
        x, y, kwargs = captured[name]
        if field_type is not None:  # a plain module: only where it keeps the parent's field type
            if x.dim() < 2 or x.shape[1] != field_type.size or x.shape != y.shape:
                continue
            module = _OnFieldType(module, field_type)
        e3nn = _is_e3nn(module)
        if kwargs and not e3nn:
            continue  # an escnn module takes one GeometricTensor
        extra = {"inputs": kwargs} if e3nn else {"layer": True}
        results: list[CheckResult] = []
        # the recorded input, and random data of exactly its shape: never a call the model does not make
        for source, data in (("random input", _random_like(x, settings.seed)), ("the model's features", x)):
            check: Callable[..., list[CheckResult]] = check_e3nn if e3nn else check_escnn
            try:
                found = check(module, settings, x=data, **extra)
            except Exception as error:  # the checker's own call: not the model's failure
                note = f"the checker could not call it alone ({type(error).__name__}: {error}); skipped"
                found = [CheckResult(f"layer alone, {source}", "", note=note)]
            for r in found:
                r.layer = name
                r.name = f"{r.name}, {source}"
                results.append(r)
        reports.append(LayerReport(name, kind, results))
    return reports


def _random_like(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Standard normal data of ``x``'s shape and dtype, smoothed over the grid as the model checks' inputs are."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    pool = {4: torch.nn.functional.avg_pool2d, 5: torch.nn.functional.avg_pool3d}.get(x.dim())
    if pool is not None and min(x.shape[2:]) >= 3:
        noise = pool(noise, 3, stride=1, padding=1, count_include_pad=False)
    return noise.to(device=x.device, dtype=x.dtype)
