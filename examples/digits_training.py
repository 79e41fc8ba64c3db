"""Training with fastdl layers: a small MobileNet-style net (depthwise convolutions,
batch norm + ReLU6) and a small ResNet-style net (batch norm + residual add + ReLU in
one layer) trained on scikit-learn's 8x8 digits, once with torch layers and once with
fastdl layers from the same initial weights. Prints test accuracy and seconds per
epoch for both.

    python examples/digits_training.py            # about a minute on 2 cores
    python examples/digits_training.py --quick    # smoke run: one epoch

Digits are upsampled to 32x32 so that the convolutions have something to chew on.
"""

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import fastdl


def digits(size: int = 32):
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    x, y = x[order], y[order]
    split = int(0.8 * len(y))
    return (x[:split], y[:split]), (x[split:], y[split:])


def conv_bn_act(c_in, c_out, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU6())


def mobilenet_style() -> nn.Module:
    def separable(c_in, c_out, stride):
        return nn.Sequential(conv_bn_act(c_in, c_in, stride, groups=c_in),
                             nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
                             nn.ReLU6())
    return nn.Sequential(conv_bn_act(1, 32), separable(32, 64, 2), separable(64, 128, 2),
                         separable(128, 128, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(128, 10))


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, + input, ReLU. With fused=True the second batch norm is a
    fastdl BatchNorm2d that adds the residual and applies the ReLU itself."""

    def __init__(self, channels: int, fused: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.fused = fused
        self.bn2 = (fastdl.nn.BatchNorm2d(channels, activation="relu") if fused
                    else nn.BatchNorm2d(channels))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        if self.fused:
            return self.bn2(self.conv2(out), residual=x)
        return F.relu(self.bn2(self.conv2(out)) + x)


def resnet_style(fused: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 32, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(32), nn.ReLU(), ResidualBlock(32, fused),
                         nn.MaxPool2d(2), ResidualBlock(32, fused), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 10))


def train(model: nn.Module, train_set, test_set, epochs: int):
    """(test accuracy, seconds per epoch)."""
    torch.manual_seed(1)  # the same batches for every model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = train_set
    seconds = 0.0
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for batch in torch.randperm(len(y)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        seconds += time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        accuracy = (model(test_set[0]).argmax(1) == test_set[1]).float().mean().item()
    return accuracy, seconds / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one epoch")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    epochs = 1 if args.quick else args.epochs
    train_set, test_set = digits()

    torch.manual_seed(0)
    mobilenet = mobilenet_style()
    mobilenet_fastdl, report = fastdl.convert(copy.deepcopy(mobilenet))
    resnet = resnet_style(fused=False)
    resnet_fastdl = resnet_style(fused=True)
    resnet_fastdl.load_state_dict(resnet.state_dict())  # same initial weights
    resnet_fastdl, _ = fastdl.convert(resnet_fastdl)

    print(f"MobileNet-style: {len(report.swapped)} layers swapped by fastdl.convert")
    print(f"{len(train_set[1])} training, {len(test_set[1])} test digits, {epochs} epochs\n")
    print("| model | layers | test accuracy | s / epoch |")
    print("|---|---|---:|---:|")
    gaps = []
    for name, torch_model, fastdl_model in (("MobileNet-style", mobilenet, mobilenet_fastdl),
                                            ("ResNet-style", resnet, resnet_fastdl)):
        results = {}
        for layers, model in (("torch", torch_model), ("fastdl", fastdl_model)):
            accuracy, seconds = train(model, train_set, test_set, epochs)
            results[layers] = accuracy
            print(f"| {name} | {layers} | {accuracy:.3f} | {seconds:.2f} |", flush=True)
        gaps.append(abs(results["torch"] - results["fastdl"]))
    print(f"\nsame accuracy: {'ok' if max(gaps) <= 0.02 else 'NO'} "
          f"(largest gap {max(gaps):.3f}; float rounding differs, so training paths drift)")


if __name__ == "__main__":
    main()
