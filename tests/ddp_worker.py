"""Trains a small converted convnet (fastdl depthwise convs and SyncBatchNorm) with
DistributedDataParallel on 2 gloo processes (CPU), each on half of every batch, and
saves the final weights; tests/test_convert.py compares them with single-process
training on the whole batches.

    python tests/ddp_worker.py OUT_DIR PORT
"""

import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fastdl

WORLD_SIZE = 2
STEPS = 3


def make_model() -> nn.Module:
    """The same initial weights in every process (and in the test)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).double()
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, 10, 10, generator=g, dtype=torch.float64),
             torch.randint(0, 4, (8,), generator=g)) for _ in range(STEPS)]


def train(model: nn.Module, data, rows=slice(None)) -> nn.Module:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in data:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[rows]), y[rows]).backward()
        optimizer.step()
    return model


def run(rank, out_dir, port):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD_SIZE)
    model, _ = fastdl.convert(make_model())
    ddp = nn.parallel.DistributedDataParallel(model)
    train(ddp, batches(), slice(rank * 4, rank * 4 + 4))
    torch.save(model.state_dict(), f"{out_dir}/rank{rank}.pt")
    # Both ranks done before either tears gloo down: one CI run saw rank 0 abort in
    # teardown ("terminate called without an active exception") once in many runs.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1], int(sys.argv[2])), nprocs=WORLD_SIZE)
