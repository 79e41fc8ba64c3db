"""A WGAN-GP critic (Gulrajani et al. 2017) trained with the gradient penalty through
fastdl's depthwise and dilated convolutions: the penalty differentiates the critic's
input gradient, so every convolution's backward is differentiated once more (second
derivatives: fastdl's backward ops have a formula of their own, which runs the
convolutions' forward and backward ops again).

The critic: a strided 3x3 convolution, two depthwise-separable blocks (MobileNet style:
depthwise 3x3, then 1x1) and a dilated 3x3 convolution (dilation 2), leaky ReLUs, a mean
over positions and a linear score; no batch norm (WGAN-GP's critic has none). Built
with torch layers, then converted with ``fastdl.convert`` (families ``depthwise`` and
``dilated``); both copies start from the same weights and see the same batches: the
real images are smooth random fields, the fake ones noise through a fixed random
filter. Each step: loss = D(fake) - D(real) + 10 * (|dD/dx(mix)| - 1)^2 on random mixes
of the two, then Adam. It checks the first step's gradients against the torch copy's
(float64 reference run alongside), prints each step's losses and the seconds per step.

    python examples/gradient_penalty.py           # 32x32 images, batch 64, 10 steps
    python examples/gradient_penalty.py --quick   # smoke run: 16x16, batch 8, 3 steps
"""

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

import fastdl

PENALTY_WEIGHT = 10.0


def critic(width: int) -> nn.Module:
    def separable(channels):
        return [nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
                nn.Conv2d(channels, channels, 1), nn.LeakyReLU(0.2)]

    return nn.Sequential(
        nn.Conv2d(3, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        *separable(width), *separable(width),
        nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.LeakyReLU(0.2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 1),
    )


def batches(count: int, batch: int, size: int, generator: torch.Generator):
    """(real, fake) pairs: real images are smoothed noise, fake ones noise through a
    fixed sharpening filter, so the two differ in their spatial statistics."""
    blur = torch.ones(3, 1, 5, 5) / 25
    sharpen = torch.tensor([[0.0, -1, 0], [-1, 5, -1], [0, -1, 0]]).expand(3, 1, 3, 3)
    for _ in range(count):
        real = F.conv2d(torch.randn(batch, 3, size, size, generator=generator), blur,
                        padding=2, groups=3) * 3
        fake = F.conv2d(torch.randn(batch, 3, size, size, generator=generator) * 0.3, sharpen,
                        padding=1, groups=3)
        yield real, fake, torch.rand(batch, 1, 1, 1, generator=generator)


def critic_loss(model: nn.Module, real, fake, mix_weight):
    """The WGAN-GP critic loss and its penalty term."""
    mixed = (mix_weight * real + (1 - mix_weight) * fake).requires_grad_()
    (grad,) = torch.autograd.grad(model(mixed).sum(), mixed, create_graph=True)
    penalty = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
    return model(fake).mean() - model(real).mean() + PENALTY_WEIGHT * penalty, penalty


def first_step_gradients(model: nn.Module, real, fake, mix_weight):
    model.zero_grad()
    critic_loss(model, real, fake, mix_weight)[0].backward()
    return [p.grad.clone() for p in model.parameters()]


def check_gradients(torch_model: nn.Module, fastdl_model: nn.Module, data) -> None:
    """The first step's gradients of both copies against the torch copy's in float64."""
    real, fake, mix_weight = data
    exact = first_step_gradients(copy.deepcopy(torch_model).double(), real.double(),
                                 fake.double(), mix_weight.double())
    for name, model in (("torch", torch_model), ("fastdl", fastdl_model)):
        grads = first_step_gradients(model, real, fake, mix_weight)
        worst = max(((g.double() - e).abs().max() / e.abs().max().clamp_min(1e-12)).item()
                    for g, e in zip(grads, exact))
        print(f"first-step gradients, {name} vs float64: max error / max |grad| = {worst:.1e}")
    # float32 rounding: ~1e-5 for fastdl here, up to ~1e-3 for torch's own path
    assert worst < 1e-3, f"fastdl's penalty gradients are off: {worst}"
    print("penalty parity: ok")


def train(model: nn.Module, data) -> tuple[list, float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.0, 0.9))
    losses, seconds = [], []
    for real, fake, mix_weight in data:
        start = time.perf_counter()
        optimizer.zero_grad()
        loss, penalty = critic_loss(model, real, fake, mix_weight)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
        losses.append((loss.item(), penalty.item()))
    return losses, sorted(seconds)[len(seconds) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args = parser.parse_args()
    size, batch, steps, width = (16, 8, 3, 16) if args.quick else (32, 64, 10, 64)

    torch.manual_seed(0)
    torch_model = critic(width)
    fastdl_model, report = fastdl.convert(torch_model, families=["depthwise", "dilated"])
    print(report)
    data = list(batches(steps + 1, batch, size, torch.Generator().manual_seed(1)))
    check_gradients(torch_model, fastdl_model, data[0])

    results = {name: train(copy.deepcopy(model), data[1:])
               for name, model in (("torch", torch_model), ("fastdl", fastdl_model))}
    print("\n| step | torch loss | fastdl loss | torch penalty | fastdl penalty |")
    print("|---:|---:|---:|---:|---:|")
    for step, ((t_loss, t_pen), (f_loss, f_pen)) in enumerate(
            zip(results["torch"][0], results["fastdl"][0])):
        print(f"| {step} | {t_loss:.5f} | {f_loss:.5f} | {t_pen:.5f} | {f_pen:.5f} |")
    t_seconds, f_seconds = results["torch"][1], results["fastdl"][1]
    print(f"\n| critic | s per step (median) |\n|---|---:|\n| torch | {t_seconds:.4f} |\n"
          f"| fastdl | {f_seconds:.4f} |\nspeedup: {t_seconds / f_seconds:.2f}x")


if __name__ == "__main__":
    main()
