"""eqnorm-check on models built the way escnn's examples build theirs (tests/check/examples.py): each passes,
unconverted and converted to eqnorm's norms, leaves the model bit for bit as it was, and a layer that breaks
equivariance inside a real architecture is found and named."""

from pathlib import Path

import pytest
import torch
from escnn import nn

import examples
from eqnorm.check._cli import main

EXAMPLES = Path(__file__).with_name("examples.py")


def check(capsys, factory, *argv):
    code = main([f"{EXAMPLES}:{factory}", "--samples", "4", *argv])
    return code, capsys.readouterr()


@pytest.mark.parametrize(
    "factory",
    [
        "e2wrn_trunk",
        "e2wrn_converted",
        "c8_notebook_cnn",
        "c8_notebook_converted",
        "se3_cnn",
        "se3_converted",
        "octahedral_cnn",
        "octahedral_converted",
    ],
)
def test_escnn_example_models_pass_unconverted_and_converted(capsys, factory):
    code, out = check(capsys, factory)
    assert code == 0, out.out + out.err
    assert "grid symmetries (exact) [eval]: passed" in out.out
    layers = out.out.split("Each layer alone")[1]
    assert "FAIL" not in layers
    norm = {
        "e2wrn_trunk": "InnerBatchNorm",
        "e2wrn_converted": "FieldGroupNorm",
        "c8_notebook_cnn": "InnerBatchNorm",
        "c8_notebook_converted": "FieldBatchNorm",
        "se3_cnn": "IIDBatchNorm3d",
        "se3_converted": "FieldLayerNorm",
        "octahedral_cnn": "InnerBatchNorm",
        "octahedral_converted": "FieldGroupNorm",
    }
    assert f" {norm[factory]} " in layers  # the norms are among the layers checked


def test_a_field_cutting_group_norm_in_a_wide_resnet_fails_and_is_named(capsys):
    code, out = check(capsys, "e2wrn_with_splitting_group_norm", "--mode", "eval")
    assert code == 1, out.out
    last = out.out.strip().splitlines()[-1]
    assert last.startswith("FAIL") and "first failing layer '2.bn2.inner' (GroupNorm)" in last


def test_whole_torch_model_with_an_escnn_trunk_is_checked_with_its_layers(capsys):
    code, out = check(capsys, "invariant_classifier")
    assert code == 0, out.out + out.err
    assert "(InvariantClassifier as a whole)" in out.out
    assert "grid symmetries (exact) [train]: passed" in out.out  # class scores invariant under the grid's turns
    for layer in ("model.trunk.0            MaskModule", "model.trunk.2            InnerBatchNorm"):
        assert layer in out.out


def test_plain_model_without_its_symmetry_is_refused_with_how_to_give_it(capsys):
    code, out = check(capsys, "InvariantClassifier")
    assert code == 2 and "eqnorm.check.WholeModel(model, in_type=..., out_type=...)" in out.err


def test_a_model_that_refuses_the_default_input_is_told_how_to_give_one(capsys, tmp_path):
    factory = tmp_path / "masked.py"
    factory.write_text(
        f"import sys\nsys.path.insert(0, {str(EXAMPLES.parent)!r})\nimport examples\n\n"
        "def model():\n    return examples.c8_notebook_cnn()[0]\n"
    )
    code = main([f"{factory}:model", "--samples", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "does not take eqnorm-check's default input of shape (4, 1, 17, 17)" in err
    assert "return (model, input) from the factory" in err


@pytest.mark.parametrize("factory", ["se3_cnn", "e2wrn_trunk"])
def test_models_copy_deepcopy_refuses_are_left_bit_identical(factory):
    """escnn's 3D groups and its eval-mode convolutions' cached filters do not survive copy.deepcopy; the checks
    run on the model itself and put back every parameter, buffer and flag."""
    model = getattr(examples, factory)()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()}
    filters = {n: m.filter.clone() for n, m in model.named_modules() if hasattr(m, "filter")}
    x = nn.GeometricTensor(
        torch.randn(2, model.in_type.size, *([9] * model.in_type.gspace.dimensionality)), model.in_type
    )
    y = model(x).tensor
    assert main([f"{EXAMPLES}:{factory}", "--samples", "2"]) in (0, 1)  # another instance: the factory is seeded
    from eqnorm.check import CheckSettings, check_escnn
    from eqnorm.check._checks import Tolerance

    check_escnn(model, CheckSettings(["train", "eval"], torch.float64, Tolerance.for_dtype(torch.float64), samples=2))
    assert not model.training and all(not m.training for m in model.modules())
    after = model.state_dict(keep_vars=False)
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert all(torch.equal(m.filter, filters[n]) for n, m in model.named_modules() if hasattr(m, "filter"))
    assert torch.equal(model(x).tensor, y)


def test_whole_e3nn_model_with_graph_inputs_and_energies_per_graph(capsys):
    code, out = check(capsys, "graph_energy")
    assert code == 0, out.out + out.err
    assert "graph independence [eval]: passed" in out.out  # one energy per graph, graphs kept apart
    assert "model.norm               IrrepsGroupNorm" in out.out
    code, out = check(capsys, "graph_energy_broken")
    last = out.out.strip().splitlines()[-1]
    assert code == 1 and "first failing layer 'model.first' (_VectorShift)" in last
