import pytest
import torch
from e3nn import o3
from e3nn.nn import BatchNorm
from e3nn.util.test import assert_equivariant

from eqnorm import convert_sync_batchnorm
from eqnorm.e3nn import IrrepsBatchNorm

IRREPS = o3.Irreps("3x0e+1x0o+2x1o+1x2e")


def test_training_equals_e3nn_batch_norm():
    ours = IrrepsBatchNorm(IRREPS).double()
    theirs = BatchNorm(IRREPS, normalization="component").double()
    with torch.no_grad():
        ours.norm.weight.uniform_(0.5, 1.5)
        ours.norm.bias.normal_()
        theirs.weight.copy_(ours.norm.weight)
        theirs.bias.copy_(ours.norm.bias)
    x = (torch.randn(5, 7, IRREPS.dim, dtype=torch.float64) + 1).requires_grad_()
    y, y_ref = ours(x), theirs(x)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, ours.norm.weight, ours.norm.bias), dy)
    want = torch.autograd.grad(y_ref, (x, theirs.weight, theirs.bias), dy)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("training", [True, False])
def test_equivariant_in_train_and_eval(training):
    norm = IrrepsBatchNorm(IRREPS, group_by="irrep").double()
    for seed in range(3):
        norm(torch.randn(6, IRREPS.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) + 2)
    norm.train(training)
    x = torch.randn(6, IRREPS.dim, dtype=torch.float64) + 2
    assert_equivariant(norm, args_in=[x], irreps_in=[IRREPS], irreps_out=[IRREPS], tolerance=1e-10)


def test_sync_needs_distributed_and_bad_dim():
    norm = convert_sync_batchnorm(IrrepsBatchNorm(IRREPS))
    with pytest.raises(RuntimeError, match="not initialised"):
        norm(torch.randn(4, IRREPS.dim))
    with pytest.raises(ValueError, match=r"\(\.\.\., 15\)"):
        IrrepsBatchNorm(IRREPS)(torch.randn(4, 14))


def test_empty_batch_returns_empty_output_and_zero_parameter_gradients():
    norm = IrrepsBatchNorm("2x0e+1x1o")
    x = torch.randn(0, 5, requires_grad=True)
    y = norm(x)
    assert y.shape == (0, 5)
    y.sum().backward()
    assert torch.equal(norm.norm.weight.grad, torch.zeros(3))
    assert torch.equal(norm.norm.bias.grad, torch.zeros(2))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_layer_keeps_float32_statistics_under_autocast(dtype):
    from eqnorm.e3nn import IrrepsGroupNorm, IrrepsLayerNorm

    x = torch.randn(7, 10) * 3 + 1
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    for norm, call in (
        (IrrepsGroupNorm("4x0e+2x1o", 2, over="graph"), lambda n: n(x, batch=batch)),
        (IrrepsLayerNorm("4x0e+2x1o"), lambda n: n(x)),
        (IrrepsBatchNorm("4x0e+2x1o"), lambda n: n(x)),
    ):
        want = call(norm)
        with torch.autocast("cpu", dtype=dtype):
            got = call(norm)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=0, rtol=0)
