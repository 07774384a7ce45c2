import json
from pathlib import Path

import pytest

from eqnorm.check._cli import main

FACTORIES = Path(__file__).with_name("factories.py")


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_default_model_passes(capsys):
    code, out, _ = run(capsys, "--samples", "8")
    assert code == 0, out
    assert "grid symmetries (exact)" in out and "interpolated rotations" in out and "batch independence" in out
    assert out.strip().splitlines()[-1].startswith("PASS")


@pytest.mark.parametrize(
    "argv",
    [
        ["--layer", "group", "--group", "D4", "--fields", "8*regular+4*trivial", "--groups", "4", "--spatial", "2"],
        [
            "--layer",
            "layer",
            "--group",
            "SO3",
            "--fields",
            "2*trivial+2*irrep1+irrep2",
            "--spatial",
            "0",
            "--dtype",
            "float64",
        ],
        [
            "--layer",
            "instance",
            "--group",
            "O2",
            "--fields",
            "trivial+irrep(1,1)+bl_regular2",
            "--spatial",
            "2",
            "--grad",
        ],
    ],
)
def test_eqnorm_layers_pass(capsys, argv):
    code, out, _ = run(capsys, *argv, "--samples", "6")
    assert code == 0, out
    assert "fiber equivariance [train]\n" in out  # a normalization layer is pointwise: the fiber check runs


@pytest.mark.parametrize("factory", ["r2conv", "relu"])
def test_escnn_layers_pass(capsys, factory):
    code, out, _ = run(capsys, f"{FACTORIES}:{factory}", "--samples", "8", "--grad")
    assert code == 0, out


@pytest.mark.parametrize("factory", ["channel_batchnorm", "splitting_group_norm", "vector_bias"])
def test_broken_layers_fail_and_name_the_element(capsys, factory):
    code, out, _ = run(capsys, f"{FACTORIES}:{factory}", "--mode", "eval", "--samples", "8")
    assert code == 1, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("FAIL") and "fiber equivariance" in last and "at element" in last
    assert "[2pi/8]" in last  # the failing group element is named


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--layer", "group", "--group", "Q7"], "unknown group"),
        (["--layer", "group", "--fields", "3*wobbly"], "unknown field name"),
        (["--layer", "group", "--group", "SO2", "--fields", "regular"], "no finite regular"),
        (["--layer", "group", "--fields", "8*regular", "--groups", "3"], "does not divide"),
        (["no_such_module_xyz:factory"], "could not import"),
        ([f"{FACTORIES}:raises"], "raised RuntimeError: no model today"),
        ([f"{FACTORIES}:not_a_module"], "expected an escnn EquivariantModule"),
        ([f"{FACTORIES}:missing"], "no callable"),
        (["nocolon"], "module:factory"),
        (["--samples", "0"], "--samples"),
    ],
)
def test_usage_errors_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and out == ""


def test_json_holds_the_table_numbers(capsys):
    argv = [
        "--layer",
        "group",
        "--group",
        "C4",
        "--fields",
        "4*regular",
        "--groups",
        "2",
        "--samples",
        "4",
        "--mode",
        "eval",
    ]
    code, table, _ = run(capsys, *argv)
    code_json, out, _ = run(capsys, *argv, "--json")
    doc = json.loads(out)
    assert code == code_json == 0 and doc["verdict"] == "pass"
    for check in doc["checks"]:
        for m in check["measurements"]:
            assert f"{m['abs_error']:>14.3e}" in table and m["element"] in table


def test_e3nn_modules(capsys):
    code, out, _ = run(capsys, f"{FACTORIES}:e3nn_linear", "--dtype", "float64", "--grad", "--samples", "6")
    assert code == 0, out
    code, out, _ = run(capsys, f"{FACTORIES}:e3nn_shift", "--samples", "6")
    assert code == 1 and "rotation and parity equivariance" in out.strip().splitlines()[-1]
