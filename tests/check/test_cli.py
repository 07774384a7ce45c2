import json
import subprocess
import sys
from pathlib import Path

import pytest

from eqnorm.check._cli import main

FACTORIES = Path(__file__).with_name("factories.py")


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_default_model_passes(capsys):
    code, out, _ = run(capsys, "--samples", "4")
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
    assert "fiber equivariance [train]: passed\n" in out  # a normalization layer is pointwise: the fiber check runs


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


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--json")

    def reject(constant):
        raise AssertionError(f"not strict JSON: {constant}")

    doc = json.loads(out, parse_constant=reject)  # exactly one document, NaN written as null
    assert doc["exit_code"] == code and doc["verdict"] == {0: "pass", 1: "fail", 2: "error"}[code]
    assert "Traceback" not in err
    return code, doc


def all_checks(doc):
    return doc["checks"] + [c for layer in doc["layers"] for c in layer["checks"]]


def test_field_splitting_group_norm_in_a_conv_model_fails_and_names_the_layer(capsys):
    argv = [f"{FACTORIES}:conv_with_splitting_group_norm", "--samples", "4", "--mode", "eval"]
    code, out, _ = run(capsys, *argv)
    assert code == 1, out
    last = out.strip().splitlines()[-1]
    assert (
        last.startswith("FAIL") and "first failing layer '1.inner' (GroupNorm)" in last and "fiber equivariance" in last
    )
    rows = {
        line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  ") and len(line.split()) == 4
    }
    assert rows["1"][-1] == rows["1.inner"][-1] == "FAIL" and rows["1.inner"][1] == "GroupNorm"
    assert rows["0"][-1] == rows["2"][-1] == rows["3"][-1] == "ok"  # the convolutions and the ReLU pass alone
    # the whole model alone passes its exact grid checks: only the per-layer fiber check finds the split
    code, doc = run_json(capsys, *argv)
    grid = next(c for c in doc["checks"] if c["name"] == "grid symmetries (exact)")
    assert grid["status"] == "passed"


def test_float64_default_model_passes_with_escnn_float32_bases(capsys):
    code, out, _ = run(capsys, "--dtype", "float64", "--samples", "4", "--mode", "eval")
    assert code == 0, out
    assert "escnn samples its filter bases in float32" in out


def test_e3nn_model_with_a_vector_bias_names_the_layer(capsys):
    code, out, _ = run(capsys, f"{FACTORIES}:e3nn_model_with_vector_bias", "--samples", "4", "--mode", "eval")
    assert code == 1
    assert "first failing layer 'shift' (_E3nnShift)" in out.strip().splitlines()[-1]


def test_interpolation_baseline_is_reported_in_degrees(capsys):
    code, doc = run_json(capsys, "--samples", "8", "--mode", "eval", "--no-layers")
    assert code == 0
    interpolated = next(c for c in doc["checks"] if c["name"] == "interpolated rotations")
    assert interpolated["status"] == "reported"
    for m in interpolated["measurements"]:
        assert "deg)" in m["element"] and 0 < m["baseline"] < 1 and m["passed"] is None
    assert {m["element"] for m in interpolated["measurements"]} >= {"1[2pi/8] (45.0 deg)"}


def test_summary_counts_statuses_apart(capsys):
    _, doc = run_json(capsys, "--samples", "4", "--mode", "eval")
    statuses = [c["status"] for c in all_checks(doc)]
    assert doc["counts"] == {s: statuses.count(s) for s in ("passed", "failed", "skipped", "reported")}
    assert doc["counts"]["skipped"] and doc["counts"]["reported"] and not doc["counts"]["failed"]
    assert doc["summary"].startswith(f"PASS: {doc['counts']['passed']} passed, {doc['counts']['skipped']} skipped")
    assert doc["header"]["dtype"] == "float32" and doc["header"]["rtol"] == 1e-5 and doc["header"]["seed"] == 0
    for c in all_checks(doc):
        assert c["status"] == "skipped" or c["tolerance"] is not None or c["status"] == "reported"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([f"{FACTORIES}:forward_raises"], "default input of shape (4, 8, 17, 17) (RuntimeError: forward is broken)"),
        ([f"{FACTORIES}:wrong_input_size"], "expects 32 in dimension 1"),
        (["--layer", "group", "--groups", "0"], "--groups must be a positive"),
        (["--atol", "-1"], "--atol must be a finite number >= 0"),
        (["--rtol", "nan"], "--rtol must be a finite number >= 0"),
        (["--dtype", "float8"], "invalid choice"),
        ([f"{FACTORIES}:raises"], "raised RuntimeError: no model today"),
    ],
)
def test_every_error_exits_2_with_one_json_document(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and out == "" and "Traceback" not in err
    code, doc = run_json(capsys, *argv)
    assert code == 2 and message in doc["error"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is available here")
def test_cuda_device_without_cuda_is_a_usage_error(capsys):
    code, _, err = run(capsys, "--device", "cuda")
    assert code == 2 and "sees no CUDA device" in err


def test_debug_prints_the_traceback(capsys):
    code, _, err = run(capsys, f"{FACTORIES}:forward_raises", "--debug")
    assert code == 2 and "Traceback" in err


def test_failure_json_and_nan_as_null(capsys):
    code, doc = run_json(capsys, f"{FACTORIES}:returns_nan", "--samples", "4", "--mode", "eval", "--no-layers")
    assert code == 1 and doc["counts"]["failed"] >= 1
    fiber = next(c for c in doc["checks"] if c["name"] == "fiber equivariance")
    assert fiber["status"] == "failed" and fiber["measurements"][0]["abs_error"] is None  # NaN, not "mixes positions"


def test_group_count_chosen_when_not_given(capsys):
    code, out, _ = run(capsys, "--layer", "group", "--fields", "8*regular", "--samples", "2", "--mode", "eval")
    assert code == 0 and "--groups not given: 4 groups of whole fields" in out


def test_so3_elements_print_on_one_line(capsys):
    argv = ["--layer", "layer", "--group", "SO3", "--fields", "2*trivial+irrep1", "--spatial", "0", "--samples", "3"]
    code, doc = run_json(capsys, *argv, "--no-layers")
    assert code == 0
    assert all("\n" not in m["element"] for c in doc["checks"] for m in c["measurements"])


def test_help_shows_defaults_and_field_names():
    from eqnorm.check._cli import parser

    text = " ".join(parser().format_help().split())
    assert "(default: C8)" in text and "(default: float32)" in text and "bl_regular<L>" in text


def test_factory_from_the_current_directory_builds_d4_before_eqnorm(tmp_path):
    """`mymod:factory` resolves from the working directory, and escnn's scikit-learn workaround is active before the
    user's module builds a D4 convolution at import."""
    (tmp_path / "d4model.py").write_text(
        "from escnn import gspaces, nn\n"
        "gs = gspaces.flipRot2dOnR2(4)\n"
        "ft = nn.FieldType(gs, [gs.regular_repr])\n"
        "conv = nn.R2Conv(nn.FieldType(gs, [gs.trivial_repr]), ft, 3, padding=1)\n"
        "def factory():\n"
        "    return conv\n"
    )
    script = "import sys; from eqnorm.check._cli import main; sys.exit(main())"
    done = subprocess.run(
        [sys.executable, "-c", script, "d4model:factory", "--samples", "2", "--mode", "eval", "--no-layers"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_per_graph_e3nn_layer_with_batch_input(capsys):
    code, doc = run_json(capsys, f"{FACTORIES}:per_graph_group_norm", "--samples", "4", "--dtype", "float64")
    assert code == 0, doc["summary"]
    assert doc["header"]["extra_inputs"] == ["batch", "num_graphs"]
    graph = next(c for c in doc["checks"] if c["name"] == "graph independence")
    assert [m["element"] for m in graph["measurements"]] == ["graph 0, others replaced", "graphs in reverse order"]


def test_module_that_couples_graphs_fails_graph_independence(capsys):
    code, out, _ = run(capsys, f"{FACTORIES}:whole_batch_norm", "--samples", "4", "--mode", "eval")
    assert code == 1 and "graph independence [eval]: failed" in out
    assert "rotation and parity equivariance [eval]: passed" in out
