"""Smoke runs of the research example scripts (``--quick``): each must finish, write its CSV and PNG files, and
report numbers that are finite and within the range its claim implies."""

import csv
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")
pytest.importorskip("statsmodels")
pytest.importorskip("ase")

ROOT = Path(__file__).resolve().parents[2]


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        table = list(csv.DictReader(f))
    assert table, f"{path.name} is empty"
    return table


def numbers(table: list[dict[str, str]], column: str) -> list[float]:
    values = [float(r[column]) for r in table]
    assert all(math.isfinite(v) for v in values), f"non-finite {column}: {values}"
    return values


def check_batch_size_sweep(out: Path) -> None:
    runs = rows(out / "runs.csv")
    assert {r["norm"] for r in runs} == {"batch", "group", "layer", "instance"}
    assert {int(r["batch_size"]) for r in runs} == {2, 4, 8, 16, 32}
    assert all(0 <= e <= 1 for e in numbers(runs, "test_error"))
    assert all(0 < v < 10 for v in numbers(runs, "final_train_loss"))


def check_num_groups(out: Path) -> None:
    for r in rows(out / "identities.csv"):
        assert float(r["max_abs_difference"]) < 1e-12, r
    assert all(0 <= e <= 1 for e in numbers(rows(out / "runs.csv"), "test_error"))


def check_equivariance_vs_angle(out: Path) -> None:
    table = rows(out / "errors.csv")
    worst = {
        name: max(float(r["fiber_error"]) for r in table if r["norm"] == name) for name in {r["norm"] for r in table}
    }
    for name, err in worst.items():
        if name.startswith("eqnorm") or name.startswith("none"):
            assert err < 1e-12, (name, err)
    assert worst["torch BatchNorm2d (eval)"] > 1e-3
    assert worst["torch GroupNorm(16), splits fields"] > 1e-8
    right_angles = [
        float(r["full_error"]) for r in table if r["norm"].startswith("eqnorm") and int(r["angle_deg"]) % 90 == 0
    ]
    assert max(right_angles) < 1e-4  # float32 convolution; exact grid permutations


def check_mixed_variance(out: Path) -> None:
    table = rows(out / "mixed_variance.csv")
    at = {(r["config"], float(r["ratio"])): r for r in table}
    mixed = at[("interleaved [A,B,A,B], 2 contiguous groups", 1000.0)]
    fixed = at[("interleaved, group_by='representation'", 1000.0)]
    assert float(mixed["b_scale"]) < 0.01 and float(mixed["b_r2"]) < 0.1
    assert abs(float(fixed["b_scale"]) - 1) < 0.05 and float(fixed["b_r2"]) > 0.99
    # the loud fields come out at unit scale, or sqrt(20/16) when 4 near-zero quiet channels share their group
    assert all(0.95 < a < 1.2 for a in numbers(table, "a_scale"))


def check_contrast(out: Path) -> None:
    layer = rows(out / "layer_change.csv")
    group = [float(r["relative_change"]) for r in layer if r["layer"] == "FieldGroupNorm"]
    batch_eval = [float(r["relative_change"]) for r in layer if r["layer"] == "FieldBatchNorm, eval"]
    assert max(group) < 1e-2 and max(batch_eval) > 0.1
    errors = rows(out / "test_error.csv")
    group_errors = {float(r["test_error"]) for r in errors if r["norm"] == "group"}
    assert len(group_errors) == 1  # the network's prediction ignores positive contrast


def check_gradient_scale(out: Path) -> None:
    grads = rows(out / "gradient_norms.csv")
    layer = {float(r["scale"]): float(r["grad_norm"]) for r in grads if r["model"] == "one FieldGroupNorm layer"}
    # exactly 1/s where eps is negligible against the variance (unit-variance input at scale 1 and 100)
    assert layer[1.0] == pytest.approx(100 * layer[100.0], rel=1e-3)
    assert layer[0.01] < 100 * layer[1.0]  # eps damps the smallest scale
    assert all(math.isfinite(v) for v in numbers(rows(out / "deep_training.csv"), "train_loss"))


def check_unet_bottleneck(out: Path) -> None:
    table = rows(out / "unet.csv")
    assert {(r["norm"], int(r["batch_size"])) for r in table} == {
        ("group", 1),
        ("group", 2),
        ("batch", 1),
        ("batch", 2),
    }
    assert all(0 <= v <= 1 for v in numbers(table, "test_iou"))
    assert all(v == 0 for v in numbers(table, "mask_change_90deg"))  # an exact grid symmetry of the whole U-Net
    assert all(0 <= v < 0.5 for v in numbers(table, "mask_change_45deg"))


def check_qm9_e3nn(out: Path) -> None:
    table = rows(out / "qm9_gap.csv")
    assert {r["norm"] for r in table} == {"group", "batch", "none"}
    assert all(0 < v < 5 for v in numbers(table, "test_mae_ev"))  # the gap's spread in QM9 is about 1.3 eV
    assert all(v < 1e-3 for v in numbers(table, "max_rotation_change_ev"))


def check_pruned_network(out: Path) -> None:
    table = rows(out / "pruning.csv")
    for r in table:
        assert float(r["measured_sparsity"]) == pytest.approx(float(r["sparsity"]), abs=0.01), r
    assert all(0 <= v <= 1 for v in numbers(table, "test_error"))


def check_printtip_microarray(out: Path) -> None:
    table = rows(out / "printtip_errors.csv")
    rmse = {m: sum(float(r["rmse_all"]) for r in table if r["method"] == m) for m in {r["method"] for r in table}}
    # the simulated dye bias, tip offsets and tip scales are each removed by one more step of the procedure
    assert rmse["none"] > rmse["global loess"] > rmse["print-tip loess"] > rmse["print-tip scaled loess"]


def check_forces_e3nn(out: Path) -> None:
    runs = rows(out / "runs.csv")
    assert {r["norm"] for r in runs} == {"group", "layer", "batch", "none"}
    assert {int(r["batch_size"]) for r in runs} == {1, 4, 16}
    for r in runs:  # trained on forces: second derivatives through every layer gave a loss that falls
        assert math.isfinite(float(r["last_loss"])) and float(r["last_loss"]) < float(r["first_loss"]), r
    assert all(0 < v < 5000 for v in numbers(runs, "force_mae_mev_a"))
    assert all(v < 1e-4 for v in numbers(runs, "force_equivariance_rel"))  # float32, random rotations and reflections
    deployment = {r["what"]: float(r["value"]) for r in rows(out / "deployment.csv")}
    # the AOTInductor package, loaded in a fresh process, computes what eager does (float32 rounding)
    forces = next(v for k, v in deployment.items() if k.startswith("package vs eager, max force"))
    energy = next(v for k, v in deployment.items() if k.startswith("package vs eager, max energy"))
    assert forces < 1e-4 and energy < 1.0  # relative; meV on energies of tens of eV
    assert all(math.isfinite(v) for v in deployment.values())
    nve = rows(out / "nve.csv")
    assert len(nve) == 201 and all(math.isfinite(v) for v in numbers(nve, "package_change_mev"))


CHECKS: dict[str, Callable[[Path], None]] = {
    "batch_size_sweep": check_batch_size_sweep,
    "num_groups": check_num_groups,
    "equivariance_vs_angle": check_equivariance_vs_angle,
    "mixed_variance": check_mixed_variance,
    "contrast": check_contrast,
    "gradient_scale": check_gradient_scale,
    "unet_bottleneck": check_unet_bottleneck,
    "qm9_e3nn": check_qm9_e3nn,
    "pruned_network": check_pruned_network,
    "printtip_microarray": check_printtip_microarray,
    "forces_e3nn": check_forces_e3nn,
}
#: seconds a smoke run may take; forces_e3nn compiles an AOTInductor package (about 2 minutes on 2 cores)
TIMEOUTS = {"forces_e3nn": 900}


@pytest.mark.parametrize("script", sorted(CHECKS))
def test_quick_run(script: str, tmp_path: Path) -> None:
    env = os.environ | {"EQNORM_NO_PROGRESS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{script}.py"), "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUTS.get(script, 300),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(tmp_path) in proc.stdout  # the script names its output folder
    pngs = list(tmp_path.glob("*.png"))
    assert pngs and all(p.stat().st_size > 5000 for p in pngs)
    CHECKS[script](tmp_path)
