"""``eqnorm-check``: check the equivariance of a normalization layer or a whole escnn or e3nn model.

    eqnorm-check                                   the built-in small C8 steerable CNN with FieldGroupNorm
    eqnorm-check --layer group --group D4 --fields "8*regular+4*trivial" --groups 4 --spatial 2
    eqnorm-check my_models:factory                 a factory returning a module, or (module, input)

Besides the whole model, every escnn and e3nn module inside it is checked alone, on random inputs and on the
features it receives in the model, and the report names the first layer that breaks equivariance.

Exit status: 0 when every check passes, 1 when one fails, 2 for a usage or input error (a module that raises
included). With --json, exactly one JSON document is printed in every case.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import math
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._optional import ESCNN_EXTRA, escnn_available
from ._checks import (
    CheckResult,
    CheckSettings,
    Tolerance,
    check_e3nn,
    check_escnn,
    e3nn_input,
    escnn_input,
    restored,
)
from ._layers import LayerReport, check_layers
from ._spaces import FIELD_NAMES, UsageError, field_type, gspace
from ._whole import WholeModel

DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise UsageError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="eqnorm-check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("target", nargs="?", help="module:factory or path/file.py:factory (default: the built-in model)")
    add("--layer", choices=["group", "layer", "instance"], help="check one eqnorm layer instead of a model")
    add("--group", default="C8", help="C<N>, D<N>, SO2, O2, SO3 or O3, with --layer (default: %(default)s)")
    add(
        "--fields",
        default="8*regular+4*trivial",
        help=f"a sum of k*name terms, with --layer; names: {FIELD_NAMES} (default: %(default)s)",
    )
    add("--groups", type=int, default=None, help="groups, with --layer group (default: whole fields, ~16 channels)")
    add("--spatial", type=int, default=2, help="0 (point features), 2 or 3, with --layer (default: %(default)s)")
    add("--centering", default="trivial", choices=["trivial", "all", "none"], help="with --layer (default: trivial)")
    add("--samples", type=int, default=16, help="group elements to test, at most (default: %(default)s)")
    add("--seed", type=int, default=0, help="seed of the random inputs and elements (default: %(default)s)")
    add("--dtype", choices=sorted(DTYPES), default="float32", help="(default: %(default)s)")
    add("--device", default="cpu", help="(default: %(default)s)")
    add("--atol", type=float, default=None, help="absolute tolerance (default: 1e-12, 1e-7, 1e-3 by dtype)")
    add("--rtol", type=float, default=None, help="tolerance relative to max |g f(x)| (default: 1e-9, 1e-5, 1e-2)")
    add("--interpolation-rtol", type=float, default=None, help="also fail interpolated rotations above it")
    add("--mode", choices=["train", "eval", "both"], default="both", help="(default: %(default)s)")
    add("--grad", action="store_true", help="check gradient equivariance too")
    add("--no-layers", action="store_true", help="check the whole model only, not each layer alone")
    add("--json", action="store_true", help="print one JSON document instead of tables")
    add("--debug", action="store_true", help="print the traceback of an error")
    return p


def _layer(args: argparse.Namespace, notes: list[str]) -> Any:
    from ..escnn import FieldGroupNorm, FieldInstanceNorm, FieldLayerNorm

    ft = field_type(gspace(args.group, args.spatial), args.fields)
    try:
        if args.layer == "group":
            layer = FieldGroupNorm(ft, args.groups, centering=args.centering)
            if args.groups is None:
                notes.append(f"--groups not given: {layer.num_groups} groups of whole fields (about 16 channels each)")
            return layer
        return (FieldLayerNorm if args.layer == "layer" else FieldInstanceNorm)(ft, centering=args.centering)
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None


def _import_factory(target: str) -> Any:
    location, _, name = target.rpartition(":")
    if not location or not name:
        raise UsageError(f"target must be module:factory or path/file.py:factory, got {target!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:  # resolve from the current directory, as python -m does
        sys.path.insert(0, os.getcwd())
    try:
        if location.endswith(".py"):
            path = Path(location)
            if not path.is_file():
                raise UsageError(f"no such file: {location}")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(location)
    except UsageError:
        raise
    except Exception as error:
        hint = f" ({ESCNN_EXTRA})" if isinstance(error, ImportError) and "escnn" in str(error) else ""
        raise UsageError(f"could not import {location!r}: {type(error).__name__}: {error}{hint}") from None
    factory = getattr(mod, name, None)
    if not callable(factory):
        raise UsageError(f"{location!r} has no callable {name!r}")
    try:
        return factory()
    except Exception as error:
        raise UsageError(f"the factory {target!r} raised {type(error).__name__}: {error}") from None


def _target(args: argparse.Namespace, notes: list[str]) -> tuple[Any, Any, str]:
    if args.layer and args.target:
        raise UsageError("give either a target or --layer, not both")
    if not args.target and not escnn_available():  # e3nn targets need no escnn; the layers and default model do
        what = "--layer builds an escnn layer" if args.layer else "the built-in default model is an escnn CNN"
        raise UsageError(f"{what}, and escnn is not installed: {ESCNN_EXTRA}")
    if args.layer:
        return _layer(args, notes), None, f"eqnorm layer --layer {args.layer}"
    if args.target:
        made = _import_factory(args.target)
        if isinstance(made, WholeModel):  # a plain torch.nn.Module, with what its input and output are
            try:
                view = made.adapted()
            except (TypeError, ValueError) as error:
                raise UsageError(f"the factory's WholeModel: {error}") from None
            given = made.input if not made.inputs else (made.input, made.inputs)
            return view, given, f"{args.target} ({type(made.model).__name__} as a whole)"
        if isinstance(made, tuple) and len(made) == 3:  # (module, input, extra keyword inputs such as batch)
            module, x, extra = made
            if not isinstance(extra, dict):
                raise UsageError(
                    f"a factory's third value must be a dict of keyword inputs, got {type(extra).__name__}"
                )
            return module, (x, extra), args.target
        module, x = made if isinstance(made, tuple) and len(made) == 2 else (made, None)
        return module, x, args.target
    from ._default import default_model

    return default_model(), None, "the built-in default model"


def _validate(args: argparse.Namespace) -> None:
    if args.samples < 1:
        raise UsageError(f"--samples must be at least 1, got {args.samples}")
    if args.groups is not None and args.groups < 1:
        raise UsageError(f"--groups must be a positive number of groups, got {args.groups}")
    for flag in ("atol", "rtol", "interpolation_rtol"):
        value = getattr(args, flag)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UsageError(f"--{flag.replace('_', '-')} must be a finite number >= 0, got {value}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: this torch sees no CUDA device")
    try:
        torch.device(args.device)
    except RuntimeError as error:
        raise UsageError(f"--device {args.device!r}: {error}") from None


@dataclasses.dataclass
class Report:
    """Everything one run of eqnorm-check found."""

    header: dict[str, Any]
    results: list[CheckResult]
    layers: list[LayerReport]

    def all_checks(self) -> list[CheckResult]:
        return self.results + [r for layer in self.layers for r in layer.results]

    def counts(self) -> dict[str, int]:
        statuses = [r.status for r in self.all_checks()]
        return {s: statuses.count(s) for s in ("passed", "failed", "skipped", "reported")}

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.all_checks())


def run_checks(args: argparse.Namespace) -> Report:
    _validate(args)
    notes: list[str] = []
    module, given, described = _target(args, notes)
    dtype = DTYPES[args.dtype]
    default = Tolerance.for_dtype(dtype)
    tolerance = Tolerance(
        args.atol if args.atol is not None else default.atol, args.rtol if args.rtol is not None else default.rtol
    )
    modes = ["train", "eval"] if args.mode == "both" else [args.mode]
    given, extra = given if isinstance(given, tuple) else (given, {})
    x = getattr(given, "tensor", given)
    if x is not None and not isinstance(x, torch.Tensor):
        raise UsageError(f"the factory's input must be a tensor or a GeometricTensor, got {type(x).__name__}")
    escnn = hasattr(module, "in_type") and hasattr(module, "out_type")
    if not escnn and not (hasattr(module, "irreps_in") and hasattr(module, "irreps_out")):
        raise UsageError(
            f"the target is a {type(module).__name__}: expected an escnn EquivariantModule (in_type/out_type), an "
            "e3nn module (irreps_in/irreps_out), or eqnorm.check.WholeModel(model, in_type=..., out_type=...) "
            "saying what a plain model's input and output are"
        )
    if extra and escnn:
        raise UsageError("extra keyword inputs (batch, ptr) are for e3nn modules")
    module.to(args.device)
    x = None if x is None else x.to(args.device)
    extra = {k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in extra.items()}
    if x is None and escnn and module.in_type.gspace.dimensionality > 0:
        x = _default_input_the_model_takes(module, dtype, args.seed)
    if x is not None:
        size = module.in_type.size if escnn else _irreps_dim(module.irreps_in)
        if x.dim() < 2 or x.shape[-1 if not escnn else 1] != size:
            where = "dimension 1" if escnn else "the last dimension"
            raise UsageError(f"the factory's input has shape {tuple(x.shape)}; the module expects {size} in {where}")
    header = {
        "target": described,
        "module": type(module).__name__,
        "input": str(module.in_type) if escnn else str(module.irreps_in),
        "extra_inputs": sorted(extra),
        "dtype": args.dtype,
        "atol": tolerance.atol,
        "rtol": tolerance.rtol,
        "seed": args.seed,
        "samples": args.samples,
        "modes": modes,
        "device": args.device,
        "notes": notes,
    }
    settings = CheckSettings(modes, dtype, tolerance, args.samples, args.seed, args.grad)
    if escnn:
        results = check_escnn(module, settings, interpolation_rtol=args.interpolation_rtol, x=x)
    else:
        results = check_e3nn(module, settings, x=x, inputs=extra)
    layers: list[LayerReport] = []
    if not args.no_layers:
        with restored(module):  # in the checked dtype, then as it was; layers without the gradient checks
            module.to(dtype)
            run = lambda: _run_once(module, x, extra, escnn, dtype, args.seed)  # noqa: E731
            layers = check_layers(module, run, settings._replace(grad=False))
    return Report(header, results, layers)


def _default_input_the_model_takes(module: Any, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """The checker's default input, after a trial call: a model that refuses it (a ``MaskModule`` built for another
    grid size) is a usage error that says how to give an input, not the model raising."""
    from escnn.nn import GeometricTensor

    x = escnn_input(module.in_type, dtype, torch.Generator().manual_seed(seed))
    try:
        with restored(module), torch.no_grad():
            module.to(dtype).eval()(GeometricTensor(x, module.in_type))
    except Exception as error:
        raise UsageError(
            f"the model does not take eqnorm-check's default input of shape {tuple(x.shape)} "
            f"({type(error).__name__}: {error}); return (model, input) from the factory, with an input it takes"
        ) from None
    return x


def _irreps_dim(irreps: Any) -> int:
    from e3nn import o3

    return int(o3.Irreps(irreps).dim)


def _run_once(
    module: Any, x: torch.Tensor | None, extra: dict[str, Any], escnn: bool, dtype: torch.dtype, seed: int
) -> None:
    """The model once in eval mode on its input (or the default one the model checks used), for the layer hooks."""
    gen = torch.Generator().manual_seed(seed)
    module.eval()
    if escnn:
        from escnn.nn import GeometricTensor

        t = escnn_input(module.in_type, dtype, gen) if x is None else x.to(dtype)
        module(GeometricTensor(t, module.in_type))
    else:
        module((e3nn_input(module.irreps_in, dtype, gen) if x is None else x).to(dtype), **extra)


def _first_failure(report: Report) -> str:
    def where(r: CheckResult) -> str:
        m = next(m for m in r.measurements if m.passed is False)
        return (
            f"{r.name} [{r.mode}] at element {m.element}, max abs error {m.abs_error:.3e}, relative {m.rel_error:.3e}"
        )

    failing = [layer for layer in report.layers if not layer.passed]
    for layer in failing:  # the innermost: a block fails because a layer inside it does
        if not any(other.name.startswith(f"{layer.name}.") for other in failing):
            r = next(r for r in layer.results if not r.passed)
            return f"first failing layer {layer.name!r} ({layer.kind}): {where(r)}"
    return where(next(r for r in report.results if not r.passed))


def summary(report: Report) -> str:
    counts = report.counts()
    line = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    if report.passed:
        return f"PASS: {line}"
    return f"FAIL: {line}; {_first_failure(report)}"


def _table(results: Sequence[CheckResult]) -> list[str]:
    lines = []
    for r in results:
        lines.append(f"\n{r.name} [{r.mode}]: {r.status}" + (f"; {r.note}" if r.note else ""))
        if not r.measurements:
            continue
        baseline = any(m.baseline is not None for m in r.measurements)
        extra = f" {'baseline':>10}" if baseline else ""
        lines.append(f"  {'element':<34} {'max abs error':>14} {'relative':>10}{extra}  verdict")
        for m in r.measurements:
            verdict = {True: "ok", False: "FAIL", None: "reported"}[m.passed]
            extra = f" {m.baseline:>10.2e}" if m.baseline is not None else ""
            lines.append(f"  {m.element:<34} {m.abs_error:>14.3e} {m.rel_error:>10.2e}{extra}  {verdict}")
    return lines


def render(report: Report) -> str:
    h = report.header
    lines = [
        f"eqnorm-check: {h['target']} ({h['module']}), input {h['input']}",
        f"dtype {h['dtype']}, atol {h['atol']:g}, rtol {h['rtol']:g}, seed {h['seed']}, up to {h['samples']} "
        f"group elements, modes {', '.join(h['modes'])}, device {h['device']}",
        *(f"note: {n}" for n in h["notes"]),
    ]
    lines += _table(report.results)
    if report.layers:
        lines.append(
            "\nEach layer alone (random input and the model's features; worst relative error of a judged check):"
        )
        lines.append(f"  {'layer':<24} {'type':<24} {'worst rel':>10}  status")
        for layer in report.layers:
            status = layer.status
            lines.append(f"  {layer.name:<24} {layer.kind:<24} {layer.worst:>10.2e}  {status}")
    lines += ["", summary(report)]
    return "\n".join(lines)


def _finite(value: Any) -> Any:
    """NaN and infinities as null, so that the document is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _check_document(r: CheckResult) -> dict[str, Any]:
    doc = dataclasses.asdict(r)
    doc["status"] = r.status
    return doc


def to_json(report: Report | None, code: int, error: str | None = None) -> str:
    doc: dict[str, Any] = {"verdict": {0: "pass", 1: "fail"}.get(code, "error"), "exit_code": code, "error": error}
    if report is not None:
        doc |= {
            "header": report.header,
            "summary": summary(report),
            "counts": report.counts(),
            "checks": [_check_document(r) for r in report.results],
            "layers": [
                {
                    "name": layer.name,
                    "type": layer.kind,
                    "status": {"ok": "passed", "FAIL": "failed"}.get(layer.status, "skipped"),
                    "worst_rel_error": layer.worst,
                    "checks": [_check_document(r) for r in layer.results],
                }
                for layer in report.layers
            ],
        }
    return json.dumps(_finite(doc), indent=2, allow_nan=False)


def main(argv: Sequence[str] | None = None) -> int:
    wants_json = "--json" in (sys.argv[1:] if argv is None else argv)
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        if escnn_available():  # escnn's scikit-learn workaround, before user code builds a group
            from ..escnn._sklearn_compat import patch_randomized_svd

            patch_randomized_svd()
        report = run_checks(parser().parse_args(argv))
    except UsageError as error:
        return _error(str(error), wants_json, debug)
    except Exception as error:  # the module under test raised: an input error, not a failed check
        return _error(f"the module raised {type(error).__name__}: {error}", wants_json, debug)
    code = 0 if report.passed else 1
    print(to_json(report, code) if wants_json else render(report))
    return code


def _error(message: str, wants_json: bool, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    if wants_json:
        print(to_json(None, 2, message))
    else:
        print(f"eqnorm-check: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
