"""``eqnorm-check``: check the equivariance of a normalization layer or a whole escnn or e3nn model.

    eqnorm-check                                   the built-in small C8 steerable CNN with FieldGroupNorm
    eqnorm-check --layer group --group D4 --fields "8*regular+4*trivial" --groups 4 --spatial 2
    eqnorm-check my_models:factory                 a factory returning a module, or (module, input)

Exit status: 0 when every check passes, 1 when one fails, 2 for a usage or input error.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ._checks import CheckResult, Tolerance, check_e3nn, check_escnn
from ._spaces import UsageError, field_type, gspace

DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eqnorm-check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("target", nargs="?", help="module:factory or path/file.py:factory (default: the built-in model)")
    p.add_argument("--layer", choices=["group", "layer", "instance"], help="check one eqnorm layer")
    p.add_argument("--group", default="C8", help="C<N>, D<N>, SO2, O2, SO3 or O3 (with --layer)")
    p.add_argument("--fields", default="8*regular+4*trivial", help="sum of k*name terms (with --layer)")
    p.add_argument("--groups", type=int, default=None, help="number of groups (with --layer group)")
    p.add_argument("--spatial", type=int, default=2, help="0 (point features), 2 or 3 (with --layer)")
    p.add_argument("--centering", default="trivial", choices=["trivial", "all", "none"], help="(with --layer)")
    p.add_argument("--samples", type=int, default=16, help="group elements to test, at most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--atol", type=float, default=None, help="absolute tolerance (default per dtype)")
    p.add_argument("--rtol", type=float, default=None, help="tolerance relative to max |g f(x)| (default per dtype)")
    p.add_argument("--interpolation-rtol", type=float, default=None, help="also fail interpolated rotations above it")
    p.add_argument("--mode", choices=["train", "eval", "both"], default="both")
    p.add_argument("--grad", action="store_true", help="check gradient equivariance too")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    return p


def _layer(args: argparse.Namespace) -> Any:
    from ..escnn import FieldGroupNorm, FieldInstanceNorm, FieldLayerNorm

    ft = field_type(gspace(args.group, args.spatial), args.fields)
    try:
        if args.layer == "group":
            return FieldGroupNorm(ft, args.groups or 1, centering=args.centering)
        return (FieldLayerNorm if args.layer == "layer" else FieldInstanceNorm)(ft, centering=args.centering)
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None


def _import_factory(target: str) -> Any:
    location, _, name = target.rpartition(":")
    if not location or not name:
        raise UsageError(f"target must be module:factory or path/file.py:factory, got {target!r}")
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
        raise UsageError(f"could not import {location!r}: {type(error).__name__}: {error}") from None
    factory = getattr(mod, name, None)
    if not callable(factory):
        raise UsageError(f"{location!r} has no callable {name!r}")
    try:
        return factory()
    except Exception as error:
        raise UsageError(f"the factory {target!r} raised {type(error).__name__}: {error}") from None


def _target(args: argparse.Namespace) -> tuple[Any, Any]:
    if args.layer and args.target:
        raise UsageError("give either a target or --layer, not both")
    if args.layer:
        return _layer(args), None
    if args.target:
        made = _import_factory(args.target)
        return made if isinstance(made, tuple) and len(made) == 2 else (made, None)
    from ._default import default_model

    return default_model(), None


def run_checks(args: argparse.Namespace) -> list[CheckResult]:
    module, given = _target(args)
    dtype = DTYPES[args.dtype]
    default = Tolerance.for_dtype(dtype)
    tolerance = Tolerance(
        args.atol if args.atol is not None else default.atol, args.rtol if args.rtol is not None else default.rtol
    )
    modes = ["train", "eval"] if args.mode == "both" else [args.mode]
    x = getattr(given, "tensor", given)
    if x is not None and not isinstance(x, torch.Tensor):
        raise UsageError(f"the factory's input must be a tensor or a GeometricTensor, got {type(x).__name__}")
    escnn = hasattr(module, "in_type") and hasattr(module, "out_type")
    if not escnn and not (hasattr(module, "irreps_in") and hasattr(module, "irreps_out")):
        raise UsageError(
            f"the target is a {type(module).__name__}: expected an escnn EquivariantModule (in_type/out_type) or an "
            "e3nn module (irreps_in/irreps_out)"
        )
    try:
        module.to(args.device)
        x = None if x is None else x.to(args.device)
    except (RuntimeError, TypeError) as error:
        raise UsageError(f"cannot use device {args.device!r}: {error}") from None
    common: dict[str, Any] = {
        "modes": modes,
        "dtype": dtype,
        "tolerance": tolerance,
        "samples": args.samples,
        "seed": args.seed,
        "grad": args.grad,
        "x": x,
    }
    if escnn:
        return check_escnn(module, interpolation_rtol=args.interpolation_rtol, **common)
    return check_e3nn(module, **common)


def _verdict(results: Sequence[CheckResult]) -> tuple[bool, str]:
    failed = [r for r in results if not r.passed]
    if not failed:
        return True, f"PASS: {len(results)} checks passed"
    worst = next(m for m in failed[0].measurements if m.passed is False)
    return False, (
        f"FAIL: {len(failed)} of {len(results)} checks failed; first: {failed[0].name} ({failed[0].mode}) at element "
        f"{worst.element}, max abs error {worst.abs_error:.3e}, relative {worst.rel_error:.3e}"
    )


def render(results: Sequence[CheckResult]) -> str:
    lines = []
    for r in results:
        lines.append(f"\n{r.name} [{r.mode}]" + (f": {r.note}" if r.note else ""))
        if r.measurements:
            lines.append(f"  {'element':<34} {'max abs error':>14} {'relative':>10}  verdict")
        for m in r.measurements:
            verdict = {True: "ok", False: "FAIL", None: "reported"}[m.passed]
            lines.append(f"  {m.element:<34} {m.abs_error:>14.3e} {m.rel_error:>10.2e}  {verdict}")
    lines.append("")
    lines.append(_verdict(results)[1])
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.samples < 1:
            raise UsageError(f"--samples must be at least 1, got {args.samples}")
        results = run_checks(args)
    except UsageError as error:
        print(f"eqnorm-check: error: {error}", file=sys.stderr)
        return 2
    ok, verdict = _verdict(results)
    if args.json:
        doc = {
            "verdict": "pass" if ok else "fail",
            "summary": verdict,
            "dtype": args.dtype,
            "checks": [dataclasses.asdict(r) | {"passed": r.passed} for r in results],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(render(results))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
