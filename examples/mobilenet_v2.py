"""MobileNetV2 (torchvision's definition) converted to fastdl layers with one call:
output parity and end-to-end inference speed against the same model in PyTorch, on
CPU, at batch 1 and 32, NCHW and channels_last; then with the batch norms folded into
the convolutions too (fastdl.fold_bn), as one would for inference.

    python examples/mobilenet_v2.py            # about a minute on 2 cores
    python examples/mobilenet_v2.py --quick    # seconds: a smoke run on small inputs

Random weights (no download); batch norm statistics are randomised too, so a
conversion that dropped them would show in the parity line.
"""

import argparse

import torch
import torchvision

import fastdl
from fastdl.bench.timing import time_pair


def randomised_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small inputs, one timing run")
    args = parser.parse_args()
    size, batches, repeats = (64, (1, 2), 1) if args.quick else (224, (1, 32), 5)

    model = randomised_model()
    converted, report = fastdl.convert(model)
    print(f"{len(report.swapped)} layers swapped ({sum('Depthwise' in s[2] for s in report.swapped)} "
          f"depthwise convs, {sum('BatchNorm' in s[2] for s in report.swapped)} batch norms, "
          f"{sum('activation=' in s[2] for s in report.swapped)} activations absorbed), "
          f"{len(report.skipped)} kept")

    folded = fastdl.fold_bn(converted)

    print("\n| batch | layout | torch ms | fastdl ms | speedup | fastdl + fold_bn ms | speedup "
          "| max rel. diff |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    worst = 0.0
    with torch.no_grad():
        for batch in batches:
            for layout in (torch.contiguous_format, torch.channels_last):
                x = torch.randn(batch, 3, size, size).contiguous(memory_format=layout)
                ours, theirs = converted.to(memory_format=layout), model.to(memory_format=layout)
                ours_folded = folded.to(memory_format=layout)
                expected = theirs(x)
                diff = max(((out - expected).abs().max() / expected.abs().max()).item()
                           for out in (ours(x), ours_folded(x)))
                worst = max(worst, diff)
                device = torch.device("cpu")
                fastdl_s, torch_s = time_pair(ours, theirs, (x,), device, repeats=repeats)
                folded_s, torch_s2 = time_pair(ours_folded, theirs, (x,), device, repeats=repeats)
                name = "channels_last" if layout is torch.channels_last else "NCHW"
                print(f"| {batch} | {name} | {torch_s * 1e3:.1f} | {fastdl_s * 1e3:.1f} | "
                      f"{torch_s / fastdl_s:.2f}x | {folded_s * 1e3:.1f} | "
                      f"{torch_s2 / folded_s:.2f}x | {diff:.1e} |", flush=True)
    print(f"\nparity: {'ok' if worst < 1e-4 else 'MISMATCH'}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CPU path {fastdl._C.cpu_isa()}")


if __name__ == "__main__":
    main()
