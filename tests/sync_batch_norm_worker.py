"""Runs fastdl.nn.SyncBatchNorm on 2 gloo processes (CPU), each on half of a batch,
and saves what each saw; tests/test_batch_norm.py compares it with batch norm on the
whole batch in one process.

    python tests/sync_batch_norm_worker.py OUT_DIR PORT
"""

import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastdl

WORLD_SIZE = 2


def inputs():
    """The whole batch, the same on every process (and in the test)."""
    torch.manual_seed(0)
    x = torch.randn(6, 5, 4, 3, dtype=torch.float64) * 3 + 2
    residual = torch.randn_like(x)
    grad = torch.randn_like(x)
    weight = torch.rand(5, dtype=torch.float64) + 0.5
    bias = torch.rand(5, dtype=torch.float64) - 0.5
    return x, residual, grad, weight, bias


def run(rank, out_dir, port):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD_SIZE)
    x, residual, grad, weight, bias = inputs()
    rows = slice(rank * 3, rank * 3 + 3)  # uneven split would work too; see the stats merge
    layer = fastdl.nn.SyncBatchNorm(5, activation="leaky_relu", negative_slope=0.2).double()
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    x_local = x[rows].clone().requires_grad_()
    residual_local = residual[rows].clone().requires_grad_()
    out = layer(x_local, residual_local)
    out.backward(grad[rows])
    torch.save(dict(out=out.detach(), grad_input=x_local.grad, grad_residual=residual_local.grad,
                    grad_weight=layer.weight.grad, grad_bias=layer.bias.grad,
                    running_mean=layer.running_mean, running_var=layer.running_var),
               f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1], int(sys.argv[2])), nprocs=WORLD_SIZE)
