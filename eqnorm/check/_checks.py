r"""Equivariance checks of escnn and e3nn modules, as data: each check lists, per group element, the error
:math:`\max |f(g x) - g f(x)|` and its size relative to :math:`\max |g f(x)|`.

What is exact and what is not (docs/theory.rst, "Exact identities" and "What is only approximate"):

- the fiber action alone (channels transformed, positions untouched) is a symmetry of pointwise modules, such as
  normalization layers and nonlinearities, and must hold to rounding for every group element;
- group elements that permute the pixels or voxels of a grid (90-degree turns, flips) are exact symmetries of a
  whole convolutional model;
- any other rotation of a grid interpolates, so its error is reported apart and fails nothing unless asked;
- a per-sample module's output for one sample does not change when the rest of the batch changes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from ._actions import act

__all__ = [
    "CheckResult",
    "CheckSettings",
    "Measurement",
    "Tolerance",
    "check_e3nn",
    "check_escnn",
    "element_label",
    "restored",
]


@dataclass
class Tolerance:
    r"""A measurement passes when :math:`\max|f(gx) - g f(x)| \le \mathrm{atol}` or
    :math:`\max|f(gx) - g f(x)| / \max|g f(x)| \le \mathrm{rtol}`."""

    atol: float
    rtol: float

    @classmethod
    def for_dtype(cls, dtype: torch.dtype) -> Tolerance:
        if dtype == torch.float64:
            return cls(1e-12, 1e-9)
        if dtype == torch.float32:
            return cls(1e-7, 1e-5)
        return cls(1e-3, 1e-2)

    def accepts(self, abs_error: float, rel_error: float) -> bool:
        return abs_error <= self.atol or rel_error <= self.rtol


class CheckSettings(NamedTuple):
    """What every check of a run shares: the modes (``"train"``, ``"eval"``), the dtype, the tolerance, how many group
    elements to sample, the seed of the random inputs and elements, and whether input gradients are checked too."""

    modes: Sequence[str]
    dtype: torch.dtype
    tolerance: Tolerance
    samples: int = 16
    seed: int = 0
    grad: bool = False


@dataclass
class Measurement:
    element: str
    abs_error: float
    rel_error: float
    passed: bool | None  # None: reported only
    baseline: float | None = None  # relative error of the interpolation baseline at this element, where measured


@dataclass
class CheckResult:
    """One check of one module (``layer`` names the submodule, ``""`` the whole model)."""

    name: str
    mode: str
    measurements: list[Measurement] = field(default_factory=list)
    note: str = ""
    layer: str = ""
    tolerance: Tolerance | None = None

    @property
    def passed(self) -> bool:
        return all(m.passed is not False for m in self.measurements)

    @property
    def status(self) -> str:
        """``failed`` (a measurement failed), ``skipped`` (nothing measured), ``reported`` (measured, judged by no
        tolerance) or ``passed``."""
        if not self.passed:
            return "failed"
        if not self.measurements:
            return "skipped"
        if all(m.passed is None for m in self.measurements):
            return "reported"
        return "passed"


def element_label(g: Any) -> str:
    """A group element on one line, with its rotation angle in degrees where it is a planar rotation."""
    text = " ".join(str(g).split())
    try:
        angle = g.to("radians")
    except Exception:  # continuous 3D rotations and other parametrizations have no single angle
        return text
    if isinstance(angle, tuple):  # dihedral: (flip, angle)
        angle = angle[-1]
    if isinstance(angle, float):
        return f"{text} ({math.degrees(angle):.1f} deg)"
    return text


def _errors(got: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    err = (got - expected).abs().max().item() if got.numel() else 0.0
    scale = expected.abs().max().item() if expected.numel() else 0.0
    return err, err / scale if scale > 0 else err


def _measure(label: str, got: torch.Tensor, expected: torch.Tensor, tolerance: Tolerance | None) -> Measurement:
    err, rel = _errors(got, expected)
    return Measurement(label, err, rel, None if tolerance is None else tolerance.accepts(err, rel))


@contextlib.contextmanager
def restored(module: torch.nn.Module) -> Iterator[None]:
    """Runs the block, then puts back every parameter and buffer of ``module`` (values, dtype, the objects
    themselves) and every train/eval flag: a check in train mode updates running statistics, one in another dtype
    converts the model, and neither may reach the model checked or the next check. The model is not copied: escnn's
    3D groups and its convolutions' cached filters do not survive ``copy.deepcopy``."""
    saved: list[tuple[dict[str, Any], str, torch.Tensor, torch.Tensor]] = [
        (store, name, tensor, tensor.data.clone())
        for m in module.modules()
        for store in (m._parameters, m._buffers)
        for name, tensor in store.items()
        if tensor is not None
    ]
    flags = [(m, m.training) for m in module.modules()]
    try:
        yield
    finally:
        for store, name, tensor, data in saved:
            tensor.data = data
            store[name] = tensor
        for m, training in flags:  # outer first: train(flag) sets the children too, which come later
            m.train(training)  # escnn's convolutions rebuild their filters from the restored weights here


def _output_check(y: torch.Tensor, mode: str, tolerance: Tolerance) -> CheckResult:
    """An output that is non-finite, or constant (zero included: its spread within the absolute tolerance) over the
    check's random input, is degenerate: every equivariance error of it would be zero, and say nothing."""
    finite = bool(torch.isfinite(y).all()) if y.numel() else True
    spread = (y.max() - y.min()).item() if y.numel() and finite else 0.0
    passed = finite and (spread > tolerance.atol or not y.numel())
    note = "" if passed else ("non-finite" if not finite else "constant") + " output: the model is degenerate here"
    measured = [Measurement("output spread", spread, 0.0, passed)]
    return CheckResult("non-degenerate output", mode, measured, note, tolerance=tolerance)


def _batch_check(
    run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str, tolerance: Tolerance | None, note: str
) -> CheckResult:
    """Sample 0's output must not move when samples 1.. are replaced by other data."""
    other = x.clone()
    other[1:] = torch.randn_like(other[1:]) * 10 + 3
    got, expected = run(other)[:1], run(x)[:1]
    return CheckResult(
        "batch independence", mode, [_measure("sample 0", got, expected, tolerance)], note, "", tolerance
    )


# ---------------------------------------------------------------------------------------------------------------------
# escnn


def _smooth_input(in_type: Any, batch: int, size: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Blurred noise inside a centred disc (ball): rotations move little of it off the grid."""
    dims = in_type.gspace.dimensionality
    shape = (batch, in_type.size) + (size,) * dims
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if dims == 0:
        return x.to(dtype)
    pool = {2: torch.nn.functional.avg_pool2d, 3: torch.nn.functional.avg_pool3d}[dims]
    for _ in range(2):
        x = pool(x, 3, stride=1, padding=1, count_include_pad=False)
    axes = torch.meshgrid(*(torch.linspace(-1, 1, size, dtype=torch.float64),) * dims, indexing="ij")
    radius = torch.stack([a.square() for a in axes]).sum(0).sqrt()
    x = x / x.std() * (radius < 0.8)
    return (x + torch.randn(shape[:2] + (1,) * dims, generator=gen, dtype=torch.float64) * (radius < 0.8)).to(dtype)


def escnn_input(in_type: Any, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """The default input of an escnn module: 4 samples of smooth noise on a 17^2 (9^3) grid, or 4 points."""
    return _smooth_input(in_type, 4, 17 if in_type.gspace.dimensionality == 2 else 9, dtype, gen)


def e3nn_input(irreps: Any, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """The default input of an e3nn module: 4 nodes of standard normal features."""
    from e3nn import o3

    return torch.randn(4, o3.Irreps(irreps).dim, generator=gen, dtype=torch.float64).to(dtype)


def _mixes_positions(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tolerance: Tolerance) -> bool:
    """Whether the module couples positions (a convolution does; a norm pooling over all positions does not)."""
    if x.dim() <= 2:
        return False
    n, c = x.shape[:2]
    perm = torch.randperm(x[0, 0].numel(), generator=torch.Generator().manual_seed(1))
    flat = x.reshape(n, c, -1)
    shuffled = flat[:, :, perm].reshape(x.shape)
    y = run(x)
    if y.shape[2:] != x.shape[2:]:
        return True
    if not torch.isfinite(y).all():  # a module that returns NaN or inf is reported as such by the fiber check
        return False
    err, rel = _errors(run(shuffled).reshape(n, y.shape[1], -1), y.reshape(n, y.shape[1], -1)[:, :, perm])
    return not tolerance.accepts(err, rel)


def _compare(
    run: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    types: tuple[Any, Any],
    check: CheckResult,
    elements: list[Any],
    whole: bool,
    tolerance: Tolerance | None,
    mask: torch.Tensor | None = None,
    exact: bool = True,
) -> CheckResult:
    """``run(g x)`` against ``g y`` for each element, ``types`` the input's and output's field types, moving the
    whole field (``whole``: by pixel permutations where ``exact``, else interpolated) or the fibers only, compared
    where ``mask`` is set (everywhere if it is None)."""
    in_type, out_type = types
    for g in elements:
        got, expected = run(act(x, in_type, g, whole, exact)), act(y, out_type, g, whole, exact)
        if mask is not None:
            got, expected = got * mask, expected * mask
        check.measurements.append(_measure(element_label(g), got, expected, tolerance))
    return check


def _interpolation_baseline(x: torch.Tensor, in_type: Any, g: Any) -> float:
    """The relative error, inside the centre disc, of rotating the input by g and back: what interpolating the grid
    alone costs, for a module that is equivariant by construction (the identity)."""
    back = act(act(x, in_type, g, True, False), in_type, ~g, True, False)
    mask = _centre_mask(back)
    return _errors(back * mask, x * mask)[1]


def _holds_float32_bases(module: Any) -> bool:
    """escnn samples the filter bases of its convolutions in float32, so their exact symmetries hold to float32."""
    return any(hasattr(m, "basisexpansion") for m in module.modules())


def _centre_mask(like: torch.Tensor, radius: float = 0.5) -> torch.Tensor:
    """1 inside a centred disc (ball) of the grid, 0 outside: where a rotated grid still has all its data."""
    axes = torch.meshgrid(*(torch.linspace(-1, 1, n, dtype=like.dtype) for n in like.shape[2:]), indexing="ij")
    inside = torch.stack([a.square() for a in axes]).sum(0) < radius**2
    return inside.to(like.dtype).reshape(1, 1, *like.shape[2:])


def _contains_batch_norm(module: Any) -> bool:
    # torch's, escnn's and e3nn's BatchNorm*, eqnorm's FieldBatchNorm/PlainBatchNorm/IrrepsBatchNorm
    return any("Batch" in type(m).__name__ and "Norm" in type(m).__name__ for m in module.modules())


def check_escnn(
    module: Any,
    settings: CheckSettings,
    interpolation_rtol: float | None = None,
    x: torch.Tensor | None = None,
    layer: bool = False,
) -> list[CheckResult]:
    r"""Every check of the module docstring for an escnn ``EquivariantModule``: for each element :math:`g` the error
    :math:`\max|f(g x) - g f(x)|` with :math:`g` acting on the fibers, on the whole field (exact grid symmetries) or
    by interpolation (other rotations, inside the centre disc), and :math:`\max|f(x)_n - f(x_n)|` for batch
    independence.

    ``layer``: one layer of a checked model, where what adds nothing is left out: the interpolated rotations (reported
    for the whole model, judged by no tolerance) and, for a pointwise layer, the grid symmetries (its fiber check and
    its indifference to shuffled positions imply them)."""
    from escnn.nn import GeometricTensor

    from ..escnn import grid_elements, is_grid_symmetry, sample_elements

    modes, dtype, tolerance, samples, seed, grad = settings
    in_type, out_type = module.in_type, module.out_type
    gspace = in_type.gspace
    gen = torch.Generator().manual_seed(seed)
    original = module
    x = escnn_input(in_type, dtype, gen) if x is None else x.to(dtype)

    def run(t: torch.Tensor) -> torch.Tensor:
        return module(GeometricTensor(t, in_type)).tensor

    grid_tolerance = tolerance
    if dtype == torch.float64 and _holds_float32_bases(module):
        float32 = Tolerance.for_dtype(torch.float32)
        grid_tolerance = Tolerance(max(tolerance.atol, float32.atol), max(tolerance.rtol, float32.rtol))
    elements = sample_elements(gspace, samples)
    grid = grid_elements(gspace) if gspace.dimensionality > 0 else []  # every one: they are the exact checks
    interpolated = [g for g in elements if gspace.dimensionality > 0 and not is_grid_symmetry(gspace, g)]
    results = []
    rng = torch.get_rng_state()
    for mode in modes:
        with restored(original):  # the model checked is left as it was
            module = original.to(dtype).train(mode == "train")
            with torch.no_grad():
                pointwise = not _mixes_positions(run, x, tolerance)
                y = run(x)
                results.append(_output_check(y, mode, tolerance))
                types = (in_type, out_type)
                if pointwise or gspace.dimensionality == 0:
                    check = CheckResult("fiber equivariance", mode, tolerance=tolerance)
                    fiber = elements + [g for g in grid if g not in elements]  # the grid's too: see ``layer``
                    results.append(_compare(run, x, y, types, check, fiber, False, tolerance))
                else:
                    note = (
                        "the module mixes positions (convolution), so the fiber action alone is no symmetry; the grid "
                        "checks below are exact"
                    )
                    results.append(CheckResult("fiber equivariance", mode, note=note))
                if grid and not (layer and pointwise):
                    note = (
                        "float64 compared at float32 tolerances: escnn samples its filter bases in float32"
                        if grid_tolerance is not tolerance
                        else ""
                    )
                    check = CheckResult("grid symmetries (exact)", mode, note=note, tolerance=grid_tolerance)
                    results.append(_compare(run, x, y, types, check, grid, True, grid_tolerance))
                if interpolated and not layer:
                    note = (
                        "rotating a grid by these angles interpolates; compared inside the centre disc next to the "
                        "baseline (the input rotated and back), reported, not failed, unless asked"
                    )
                    interp_tol = None if interpolation_rtol is None else Tolerance(0.0, interpolation_rtol)
                    check = CheckResult("interpolated rotations", mode, note=note, tolerance=interp_tol)
                    mask = _centre_mask(y) if y.dim() > 2 else None
                    results.append(_compare(run, x, y, types, check, interpolated, True, interp_tol, mask, False))
                    for m, g in zip(check.measurements, interpolated, strict=True):
                        m.baseline = _interpolation_baseline(x, in_type, g)
                batch_required = mode == "eval" or not _contains_batch_norm(module)
                note = "" if batch_required else "reported only: the module holds a batch norm in train mode"
                results.append(_batch_check(run, x, mode, tolerance if batch_required else None, note))
            if grad:
                results.append(
                    _gradient_check(
                        module, run, x, grid if not pointwise else elements, not pointwise, mode, tolerance, gen
                    )
                )
    torch.set_rng_state(rng)  # dropout and other random layers draw from it
    return results


def _gradient_check(
    module: Any,
    run: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    elements: list[Any],
    whole: bool,
    mode: str,
    tolerance: Tolerance,
    gen: torch.Generator,
) -> CheckResult:
    """The input gradient of <f(x), v> transforms like x: grad(g x, g v) = g grad(x, v)."""
    in_type, out_type = module.in_type, module.out_type

    def input_grad(t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        t = t.clone().requires_grad_()
        (grad,) = torch.autograd.grad(run(t), t, v)
        return grad

    with torch.no_grad():
        v = torch.randn(run(x).shape, generator=gen, dtype=torch.float64).to(x.dtype)
    base = input_grad(x, v)
    check = CheckResult("gradient equivariance", mode, tolerance=tolerance)
    for g in elements:
        got = input_grad(act(x, in_type, g, whole), act(v, out_type, g, whole))
        check.measurements.append(_measure(element_label(g), got, act(base, in_type, g, whole), tolerance))
    return check


# ---------------------------------------------------------------------------------------------------------------------
# e3nn


def check_e3nn(
    module: Any,
    settings: CheckSettings,
    x: torch.Tensor | None = None,
    inputs: dict[str, Any] | None = None,
) -> list[CheckResult]:
    r"""Rotations and inversions of an e3nn module with ``irreps_in`` and ``irreps_out`` on ``(nodes, dim)`` inputs:
    :math:`\max|f(D_{\mathrm{in}}(g)\,x) - D_{\mathrm{out}}(g)\,f(x)|` for sampled :math:`g \in O(3)`, with
    e3nn's Wigner matrices :math:`D`. ``inputs`` are extra keyword inputs of every call (``batch``, ``ptr``,
    ``num_graphs`` of per-graph modules); with ``batch`` or ``ptr``, batch independence moves whole graphs."""
    from e3nn import o3

    modes, dtype, tolerance, samples, seed, grad = settings
    irreps_in = o3.Irreps(module.irreps_in)
    irreps_out = None if module.irreps_out is None else o3.Irreps(module.irreps_out)  # None: invariant outputs
    gen = torch.Generator().manual_seed(seed)
    original = module
    x = e3nn_input(irreps_in, dtype, gen) if x is None else x.to(dtype)
    extra = dict(inputs or {})
    graphs = _graph_of_node(extra, x.shape[0])

    def run(t: torch.Tensor, **changed: Any) -> torch.Tensor:
        return module(t, **(extra | changed))

    with torch.random.fork_rng(devices=[]):  # e3nn's Haar sampler draws from the global generator
        torch.manual_seed(seed)
        matrices = o3.rand_matrix(samples, dtype=torch.float64)
    rotations = [
        (f"rotation {k}" + (" with inversion" if k % 2 else ""), m * (-1 if k % 2 else 1))
        for k, m in enumerate(matrices)
    ]
    results = []
    rng = torch.get_rng_state()
    for mode in modes:
        with restored(original):  # the model checked is left as it was
            module = original.to(dtype).train(mode == "train")
            check = CheckResult("rotation and parity equivariance", mode, tolerance=tolerance)
            with torch.no_grad():
                y = run(x)
                results.append(_output_check(y, mode, tolerance))
                # each rotation's Wigner matrices once, for this check and the gradient check
                actions = [
                    (label, irreps_in.D_from_matrix(m).to(dtype), _output_action(irreps_out, m, y).to(dtype))
                    for label, m in rotations
                ]
                for label, d_in, d_out in actions:
                    check.measurements.append(_measure(label, run(x @ d_in.T), y @ d_out.T, tolerance))
                results.append(check)
                if graphs is None:
                    results.append(_batch_check(run, x, mode, tolerance, ""))
                else:
                    results.append(_graph_check(run, x, graphs, extra, mode, tolerance))
            if grad:
                gcheck = CheckResult("gradient equivariance", mode, tolerance=tolerance)
                v = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(dtype)

                def input_grad(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
                    t = t.clone().requires_grad_()
                    return torch.autograd.grad(run(t), t, w)[0]

                base = input_grad(x, v)
                for label, d_in, d_out in actions:
                    gcheck.measurements.append(
                        _measure(label, input_grad(x @ d_in.T, v @ d_out.T), base @ d_in.T, tolerance)
                    )
                results.append(gcheck)
    torch.set_rng_state(rng)
    return results


def _output_action(irreps_out: Any, matrix: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The output's Wigner matrix for ``matrix``: the identity for invariant outputs (``irreps_out`` None)."""
    if irreps_out is None:
        return torch.eye(y.shape[-1], dtype=torch.float64)
    return irreps_out.D_from_matrix(matrix)


def _graph_of_node(inputs: dict[str, Any], nodes: int) -> torch.Tensor | None:
    """The graph id of each node, from a ``batch`` vector or ``ptr`` offsets, or None for a plain batch."""
    if inputs.get("batch") is not None:
        return torch.as_tensor(inputs["batch"]).long().cpu()
    if inputs.get("ptr") is not None:
        ptr = torch.as_tensor(inputs["ptr"]).long().cpu()
        return torch.repeat_interleave(torch.arange(ptr.numel() - 1), ptr.diff(), output_size=nodes)
    return None


def _graph_check(
    run: Callable[..., torch.Tensor],
    x: torch.Tensor,
    graphs: torch.Tensor,
    inputs: dict[str, Any],
    mode: str,
    tolerance: Tolerance,
) -> CheckResult:
    """Per-graph independence: the first graph's output must not move when every other graph's nodes are replaced,
    and each graph's output must move with it when the graphs come in the reverse order. Outputs are per node, or
    per graph (one row per graph, as energies are)."""
    first = (graphs == graphs[0]).to(x.device)
    other = x.clone()
    other[~first] = torch.randn_like(other[~first]) * 10 + 3
    y = run(x)
    groups = _groups(graphs)[::-1]
    per_graph = y.shape[0] != x.shape[0]
    if per_graph and y.shape[0] != len(groups):
        note = (
            f"{y.shape[0]} output rows for {x.shape[0]} nodes in {len(groups)} graphs: neither per node nor per graph"
        )
        return CheckResult("graph independence", mode, note=note)
    own = slice(0, 1) if per_graph else first
    check = CheckResult("graph independence", mode, tolerance=tolerance)
    check.measurements.append(_measure("graph 0, others replaced", run(other)[own], y[own], tolerance))
    order = torch.cat(groups)
    sizes = torch.tensor([g.numel() for g in groups])
    changed = {
        "batch": torch.repeat_interleave(torch.arange(len(groups)), sizes).to(x.device),
        "ptr": torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)]).to(x.device),
    }
    given = {k: v for k, v in changed.items() if inputs.get(k) is not None}
    reversed_out = run(x[order.to(x.device)], **given)
    expected = y.flip(0) if per_graph else y[order.to(x.device)]
    check.measurements.append(_measure("graphs in reverse order", reversed_out, expected, tolerance))
    return check


def _groups(graphs: torch.Tensor) -> list[torch.Tensor]:
    return [torch.nonzero(graphs == g).flatten() for g in torch.unique(graphs)]
