"""Peak extra host memory of one attention forward + backward on CPU, against N.

Each measurement runs in a fresh process: a small call first (lazy initialisation),
then the inputs are made, then
the peak resident set (ru_maxrss) is read before and after the call; the difference
is what the call itself needed. fastdl's kernels hold O(N) scratch (packed K/V tiles,
per-thread blocks); an (N, N) score matrix would be 4 N^2 bytes per head.

    python benchmarks/attention_memory.py [--heads 4] [--sizes 1024 4096 16384]
"""

import argparse
import subprocess
import sys

CHILD = """
import resource, sys, torch, torch.nn.functional as F
import fastdl
from torch.nn.attention import sdpa_kernel, SDPBackend
impl, n, heads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
def inputs(n):
    q, k, v = (torch.randn(1, heads, n, 64, requires_grad=True) for _ in range(3))
    return q, k, v, torch.randn(1, heads, n, 64)
def run(q, k, v, grad):
    if impl == "fastdl":
        out = fastdl.ops.attention(q, k, v, is_causal=True)
    else:
        backend = SDPBackend.FLASH_ATTENTION if impl == "sdpa-flash" else SDPBackend.MATH
        with sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.autograd.grad(out, (q, k, v), grad)
run(*inputs(128))  # first-call costs (thread pool, lazy init) are not the op's
args = inputs(n)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run(*args)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def peak_extra_mib(impl: str, n: int, heads: int) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, impl, str(n), str(heads)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--math-up-to", type=int, default=4096,
                        help="largest N for the math backend (its N x N buffers)")
    args = parser.parse_args()
    print(f"causal self-attention fwd+bwd, batch 1, {args.heads} heads, D 64, float32; "
          "peak extra MiB")
    print("| N | size of q, k, v, grad_out and 3 grads, MiB (for scale) | fastdl | SDPA flash (CPU) | SDPA math |")
    print("|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        tensors = 7 * args.heads * n * 64 * 4 / 2**20  # q k v grad_out and 3 gradients
        row = [peak_extra_mib("fastdl", n, args.heads), peak_extra_mib("sdpa-flash", n, args.heads)]
        math = (f"{peak_extra_mib('sdpa-math', n, args.heads):.1f}" if n <= args.math_up_to
                else "not run")
        print(f"| {n} | {tensors:.1f} | {row[0]:.1f} | {row[1]:.1f} | {math} |")


if __name__ == "__main__":
    main()
