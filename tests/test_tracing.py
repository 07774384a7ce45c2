"""Tracing: one compiled graph for many spatial sizes, export with dynamic batch and spatial dims, an AOTInductor
package that runs at other sizes, eager output unchanged after a cold export, per-graph offsets under fullgraph."""

import pytest
import torch
import torch._dynamo.testing

import eqnorm
from eqnorm import FieldLayout, FieldNorm

pytestmark = pytest.mark.skipif(eqnorm.kernel_backend("cpu") == "torch", reason="the compiled extension is not built")

LAYOUT = FieldLayout([["s", "v"], ["s"], ["v"], ["s"]], {"s": 1, "v": 2}, {"s"}, [0, 1, 0, 1])


def test_one_graph_for_ten_spatial_sizes():
    torch._dynamo.reset()
    norm = FieldNorm(LAYOUT)
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(norm, backend=counter, dynamic=True, fullgraph=True)
    for size in (4, 5, 8, 9, 10, 11, 12, 13, 15, 16):  # no size equal to another dim: duck sizing would tie them
        x = torch.randn(3, 7, size, size + 1)
        torch.testing.assert_close(compiled(x), norm(x))
    assert counter.frame_count == 1


def test_compiled_forward_and_backward_with_inductor():
    torch._dynamo.reset()
    norm = FieldNorm(LAYOUT)
    compiled = torch.compile(norm, dynamic=True, fullgraph=True)
    for size in (3, 5):
        x = torch.randn(2, 7, size, 4, requires_grad=True)
        y, y_ref = compiled(x), norm(x)
        torch.testing.assert_close(y, y_ref)
        dy = torch.randn_like(y)
        got = torch.autograd.grad(y, (x, norm.weight, norm.bias), dy)
        want = torch.autograd.grad(y_ref, (x, norm.weight, norm.bias), dy)
        for g, r in zip(got, want, strict=True):
            torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


def dynamic_export(norm: torch.nn.Module) -> torch.export.ExportedProgram:
    dims = {
        0: torch.export.Dim("n", min=1, max=64),
        2: torch.export.Dim("h", min=2, max=64),
        3: torch.export.Dim("w", min=2, max=64),
    }
    return torch.export.export(norm, (torch.randn(2, 7, 5, 6),), dynamic_shapes={"x": dims})


def test_export_with_dynamic_dims_then_eager_is_unchanged():
    norm = FieldNorm(LAYOUT)  # never run eagerly before the export: nothing may cache a traced tensor
    program = dynamic_export(norm)
    for shape in ((1, 7, 3, 9), (4, 7, 8, 2)):
        x = torch.randn(shape)
        torch.testing.assert_close(program.module()(x), norm(x))
    y = norm(torch.randn(2, 7, 4, 4))
    assert type(y) is torch.Tensor


def test_aot_inductor_package_runs_at_two_sizes(tmp_path):
    from torch._inductor import aoti_compile_and_package, aoti_load_package

    norm = FieldNorm(LAYOUT).eval()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    path = aoti_compile_and_package(dynamic_export(norm), package_path=str(tmp_path / "norm.pt2"))
    runner = aoti_load_package(path)
    for shape in ((1, 7, 3, 9), (5, 7, 6, 4)):
        x = torch.randn(shape)
        torch.testing.assert_close(runner(x), norm(x), atol=1e-5, rtol=1e-5)


def test_per_graph_offsets_compile_fullgraph_with_num_graphs():
    pytest.importorskip("e3nn")
    from eqnorm.e3nn import IrrepsGroupNorm

    torch._dynamo.reset()
    norm = IrrepsGroupNorm("4x0e+2x1o", 2, over="graph")
    compiled = torch.compile(norm, fullgraph=True, dynamic=True)
    for nodes in (5, 9):
        x = torch.randn(nodes, 10)
        batch = torch.sort(torch.randint(0, 3, (nodes,)))[0]
        torch.testing.assert_close(compiled(x, batch=batch, num_graphs=3), norm(x, batch=batch))
