"""Train a small C8 steerable CNN with DistributedDataParallel on CPU (gloo), normalised by FieldGroupNorm (needs no
synchronisation) or by synchronised FieldBatchNorm.

    .venv/bin/torchrun --nproc_per_node=2 examples/train_ddp.py --norm batch --steps 60

Data: synthetic 21x21 images of three shapes (a bar, a cross, an L) at random angles and positions, made on the fly
with a fixed seed per process, so nothing is downloaded. Rank 0 prints the loss and the accuracy on held-out images.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch
import torch.distributed as dist
from escnn import gspaces, nn

import eqnorm

SIZE = 21


def shapes(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of a bar (0), a cross (1) or an L (2), rotated by a random angle, with noise."""
    labels = torch.randint(0, 3, (n,), generator=gen)
    angle = torch.rand(n, generator=gen) * 2 * math.pi
    coords = torch.linspace(-1, 1, SIZE)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    c, s = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    u, v = c * xx + s * yy, -s * xx + c * yy
    bar = ((u.abs() < 0.6) & (v.abs() < 0.12)).float()
    cross = torch.maximum(bar, ((v.abs() < 0.6) & (u.abs() < 0.12)).float())
    ell = torch.maximum(bar, ((v > -0.12) & (v < 0.6) & ((u - 0.5).abs() < 0.12)).float())
    images = torch.stack([bar, cross, ell], 1)[torch.arange(n), labels]
    return (images + 0.1 * torch.randn(images.shape, generator=gen)).unsqueeze(1), labels


def model(norm: str) -> nn.SequentialModule:
    gs = gspaces.rot2dOnR2(8)
    image = nn.FieldType(gs, [gs.trivial_repr])
    hidden = nn.FieldType(gs, 8 * [gs.regular_repr])

    def normalization() -> nn.EquivariantModule:
        return eqnorm.FieldGroupNorm(hidden, 4) if norm == "group" else eqnorm.FieldBatchNorm(hidden)

    return nn.SequentialModule(
        nn.R2Conv(image, hidden, 5, padding=2),
        normalization(),
        nn.ReLU(hidden),
        nn.PointwiseMaxPool2D(hidden, 2),
        nn.R2Conv(hidden, hidden, 5, padding=2),
        normalization(),
        nn.ReLU(hidden),
        nn.GroupPooling(hidden),
    )


class Classifier(torch.nn.Module):
    def __init__(self, norm: str) -> None:
        super().__init__()
        self.features = model(norm)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(nn.GeometricTensor(x, self.features.in_type)).tensor
        return self.head(y.mean((2, 3)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--norm", choices=["group", "batch"], default="group")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8, help="per process")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights everywhere
    net = Classifier(args.norm)
    if args.norm == "batch":
        eqnorm.convert_sync_batchnorm(net)
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1000 + rank)
    for step in range(1, args.steps + 1):
        x, y = shapes(args.batch, gen)
        loss = torch.nn.functional.cross_entropy(ddp(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if rank == 0 and (step % 10 == 0 or step == args.steps):
            print(f"step {step:4d}  loss {loss.item():.3f}", flush=True)
    if rank == 0:
        net.eval()
        x, y = shapes(300, torch.Generator().manual_seed(7))
        with torch.no_grad():
            accuracy = (net(x).argmax(1) == y).float().mean().item()
        print(f"{args.norm} norm, {world} processes x batch {args.batch}: held-out accuracy {accuracy:.1%}")
    # both ranks tear gloo down together: a rank that leaves while the other still evaluates closes the pair's
    # sockets under the other's gloo threads, which can end that process in std::terminate
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Everything is done, printed and torn down. gloo's transport threads can still be winding down when the
    # interpreter finalizes, which has ended a rank in std::terminate ("terminate called without an active exception",
    # a known race of gloo's teardown); leaving here skips that second, C++-level teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
