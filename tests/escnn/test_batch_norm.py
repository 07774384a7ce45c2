import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp
from escnn import gspaces, nn

from eqnorm import FieldBatchNorm, convert_sync_batchnorm
from eqnorm.escnn import equivariance_errors, grid_elements, random_input, sample_elements


def scalars(channels=6):
    gs = gspaces.rot2dOnR2(4)
    return nn.FieldType(gs, channels * [gs.trivial_repr])


def regular(fields=3):
    gs = gspaces.rot2dOnR2(4)
    return nn.FieldType(gs, fields * [gs.regular_repr])


def train_steps(ours, theirs, ft, steps=3, view=lambda t: t):
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = (torch.randn(4, ft.size, 5, 5, generator=gen, dtype=torch.float64) * 2 + 1).requires_grad_()
        y = ours(nn.GeometricTensor(x, ft)).tensor
        y_ref = theirs(view(x)).reshape(y.shape)
        torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
        dy = torch.randn_like(y)
        got = torch.autograd.grad(y, (x, ours.weight, ours.bias), dy)
        want = torch.autograd.grad(y_ref, (x, theirs.weight, theirs.bias), dy)
        return_pairs = list(zip(got, want, strict=True))
        torch.testing.assert_close(return_pairs[0][0], return_pairs[0][1], atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(return_pairs[1][0], return_pairs[1][1], atol=1e-10, rtol=1e-10)
        yield return_pairs[2]


@pytest.mark.parametrize("momentum", [0.1, None])
def test_equals_torch_batchnorm2d_on_scalars(momentum):
    ft = scalars()
    ours = FieldBatchNorm(ft, momentum=momentum).double()
    theirs = torch.nn.BatchNorm2d(ft.size, momentum=momentum).double()
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.normal_()
        theirs.weight.copy_(ours.weight)
        theirs.bias.copy_(ours.bias)
    for got, want in train_steps(ours, theirs, ft):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ours.running_cen, theirs.running_mean, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ours.running_var, theirs.running_var, atol=1e-12, rtol=1e-12)
    ours.eval()
    theirs.eval()
    x = torch.randn(3, ft.size, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(ours(nn.GeometricTensor(x, ft)).tensor, theirs(x), atol=1e-12, rtol=1e-12)


def test_regular_fields_equal_batchnorm3d_on_the_field_view():
    ft = regular()
    ours = FieldBatchNorm(ft).double()
    theirs = torch.nn.BatchNorm3d(3).double()
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.normal_()
        theirs.weight.copy_(ours.weight)
        theirs.bias.copy_(ours.bias / 2)  # the bias of a regular field's trivial component, spread over 4 channels

    def view(t):
        return t.reshape(t.shape[0], 3, 4, *t.shape[2:])

    for got, want in train_steps(ours, theirs, ft, view=view):
        torch.testing.assert_close(got, want / 2, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ours.running_var, theirs.running_var, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ours.running_cen, theirs.running_mean.repeat_interleave(4), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(("centering", "track"), [("trivial", True), ("none", True), ("all", False)])
def test_equivariance_in_train_and_eval(centering, track):
    gs = gspaces.flipRot2dOnR2(4)
    ft = nn.FieldType(gs, 2 * [gs.regular_repr] + 2 * [gs.irrep(1, 1)] + [gs.trivial_repr])
    norm = FieldBatchNorm(ft, group_by="representation", centering=centering, track_running_stats=track).double()
    x = random_input(ft, batch=4, size=5)
    for _ in range(3):
        norm(random_input(ft, batch=4, size=5, seed=_ + 1))  # non-trivial running statistics
    for mode in (True, False):
        norm.train(mode)
        with torch.no_grad():
            fiber = equivariance_errors(norm, x, sample_elements(gs), fibers_only=True)
            grid = equivariance_errors(norm, x, grid_elements(gs), fibers_only=False)
        assert max(e for _, e, _ in fiber + grid) < 1e-10


def test_errors():
    ft = scalars()
    with pytest.raises(ValueError, match="more than one value per channel"):
        FieldBatchNorm(ft)(nn.GeometricTensor(torch.randn(1, ft.size, 1, 1), ft))
    gs = gspaces.no_base_space(gspaces.rot2dOnR2(4).fibergroup)
    point_type = nn.FieldType(gs, 2 * [gs.trivial_repr])
    with pytest.raises(ValueError, match="more than one value per channel"):
        FieldBatchNorm(point_type)(nn.GeometricTensor(torch.randn(1, 2), point_type))
    with pytest.raises(RuntimeError, match="not initialised"):
        convert_sync_batchnorm(FieldBatchNorm(ft))(nn.GeometricTensor(torch.randn(2, ft.size, 3, 3), ft))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        FieldBatchNorm(ft, centering="all")
    with pytest.raises(ValueError, match="momentum"):
        FieldBatchNorm(ft, momentum=2.0)
    with pytest.raises(TypeError, match="FieldType"):
        FieldBatchNorm(None)
    # a batch of one sample is fine in eval mode and with spatial extent
    FieldBatchNorm(ft)(nn.GeometricTensor(torch.randn(1, ft.size, 2, 2), ft))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, x, dy, state, queue, splits, by_argument):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=__import__("datetime").timedelta(seconds=60)
    )
    try:
        ft = regular()
        if by_argument:  # the constructor's process_group synchronises, as torch.nn.SyncBatchNorm's does
            norm = FieldBatchNorm(ft, process_group=torch.distributed.group.WORLD).double()
        else:
            norm = convert_sync_batchnorm(FieldBatchNorm(ft).double())
        norm.load_state_dict(state)
        start = sum(splits[:rank])
        part = slice(start, start + splits[rank])
        xs = x[part].clone().requires_grad_()
        y = norm(nn.GeometricTensor(xs, ft)).tensor
        grads = torch.autograd.grad(y, (xs, norm.weight, norm.bias), dy[part])
        # numpy arrays travel by value (a tensor would be shared through this process, which is about to exit)
        tensors = (y.detach(), *grads, norm.running_cen, norm.running_var)
        queue.put((rank, *(t.numpy().copy() for t in tensors)))
    finally:
        torch.distributed.destroy_process_group()
    _leave(queue)


@pytest.mark.parametrize(
    ("splits", "size", "by_argument"),
    [((2, 2), 5, False), ((0, 4), 3, False), ((1, 3), 1, False), ((3, 2), 2, True)],
    ids=["2+2", "0+4: a process without samples", "1+3 samples of one value each", "3+2, process_group argument"],
)
def test_two_processes_equal_one_process_on_the_whole_batch(splits, size, by_argument):
    ft = regular()
    reference = FieldBatchNorm(ft).double()
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.normal_()
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    x = torch.randn(sum(splits), ft.size, size, size, dtype=torch.float64) * 2 + 1
    dy = torch.randn_like(x)
    xr = x.clone().requires_grad_()
    y = reference(nn.GeometricTensor(xr, ft)).tensor
    gx, gw, gb = torch.autograd.grad(y, (xr, reference.weight, reference.bias), dy)

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, x, dy, state, queue, splits, by_argument)) for r in range(2)]
    for p in procs:
        p.start()
    results = {r[0]: [torch.from_numpy(a) for a in r[1:]] for r in (queue.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    torch.testing.assert_close(torch.cat([results[0][0], results[1][0]]), y.detach(), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(torch.cat([results[0][1], results[1][1]]), gx, atol=1e-10, rtol=1e-10)
    # each process holds the gradient of its own half; DDP sums them
    torch.testing.assert_close(results[0][2] + results[1][2], gw, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(results[0][3] + results[1][3], gb, atol=1e-10, rtol=1e-10)
    for r in (0, 1):
        torch.testing.assert_close(results[r][4], reference.running_cen, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(results[r][5], reference.running_var, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", ["C8", "SO3"])
def test_check_equivariance_checks_train_and_eval_and_catches_a_broken_layer(name):
    from test_group_norm import field_type

    layer = FieldBatchNorm(field_type(name))
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.bias.normal_()
        layer.norm.running_var.uniform_(0.5, 2)
    train = layer.equivariance_errors(training=True)
    before = layer.norm.running_var.clone()
    checked = layer.check_equivariance()
    assert len(checked) >= 2 * sum(len(r) for r in train.values())  # train and eval, the grid's elements on the fibers
    assert torch.equal(layer.norm.running_var, before) and layer.training  # the train-mode check changed nothing
    broken = FieldBatchNorm(field_type(name))
    layout = broken.norm.layout
    moving = next(i for i, irreps in enumerate(layout.field_irreps) if not set(irreps) <= layout.trivial)
    broken.norm.index_bias_channel.fill_(sum(layout.field_sizes[:moving]))  # every bias on a field that rotates
    with torch.no_grad():
        broken.norm.bias.normal_()
    with pytest.raises(AssertionError, match="equivariance fails"):
        broken.check_equivariance()


@pytest.mark.parametrize("training", [True, False])
def test_empty_batch_returns_empty_output_and_zero_parameter_gradients(training):
    ft = regular()
    norm = FieldBatchNorm(ft).train(training)
    x = torch.randn(0, ft.size, 5, 5, requires_grad=True)
    y = norm(nn.GeometricTensor(x, ft)).tensor
    assert y.shape == x.shape
    y.sum().backward()
    assert torch.equal(norm.weight.grad, torch.zeros_like(norm.weight))
    assert torch.equal(norm.bias.grad, torch.zeros_like(norm.bias))


def test_statistics_stay_float32_under_autocast():
    """Autocast must not lower the statistics or the coefficients: the output equals the float32 one."""
    ft = regular()
    norm = FieldBatchNorm(ft)
    x = torch.randn(4, ft.size, 5, 5) * 3 + 1
    want = norm(nn.GeometricTensor(x, ft)).tensor
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dtype):
            got = norm(nn.GeometricTensor(x, ft)).tensor
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def _ddp_group_norm_worker(rank, world, port, x, state, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=__import__("datetime").timedelta(seconds=60)
    )
    try:
        model = _group_norm_model()
        model.load_state_dict(state)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        half = x.shape[0] // world
        ft = model[0].in_type
        y = ddp(nn.GeometricTensor(x[rank * half : (rank + 1) * half], ft)).tensor
        (y.square().mean() * 0.5).backward()  # DDP averages the ranks' gradients: the mean over the whole batch
        queue.put((rank, [p.grad.numpy().copy() for p in model.parameters()]))
    finally:
        torch.distributed.destroy_process_group()
    _leave(queue)


def _leave(queue) -> None:
    """End a worker whose results are sent, skipping the interpreter's teardown: gloo's late teardown at exit has
    ended a finished rank in std::terminate ("terminate called without an active exception", a known race)."""
    queue.close()
    queue.join_thread()  # the results reach the parent before the process ends
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _group_norm_model() -> nn.SequentialModule:
    from eqnorm import FieldGroupNorm

    ft = regular()
    return nn.SequentialModule(nn.R2Conv(ft, ft, 3, padding=1), FieldGroupNorm(ft, 3), nn.ReLU(ft)).double()


def test_ddp_with_group_norm_equals_one_process_on_the_whole_batch():
    """Group normalization keeps no batch statistics: two DDP processes on halves of a batch get the gradients of one
    process on the whole batch."""
    torch.manual_seed(0)
    model = _group_norm_model()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.normal_()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, model[0].in_type.size, 6, 6, dtype=torch.float64) * 2 + 1
    y = model(nn.GeometricTensor(x, model[0].in_type)).tensor
    (y.square().mean() * 0.5).backward()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_ddp_group_norm_worker, args=(r, 2, port, x, state, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for r in (0, 1):
        for grad, p in zip(results[r], model.parameters(), strict=True):
            torch.testing.assert_close(torch.from_numpy(grad), p.grad, atol=1e-10, rtol=1e-10)
