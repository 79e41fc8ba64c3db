"""A small WaveNet (van den Oord et al. 2016) on a synthetic waveform: an embedding of
256 mu-law classes, a causal input convolution, gated residual blocks of causal
``fastdl.nn.DilatedConv1d`` (k=2, dilations 1, 2, 4, ..., 512, two cycles: a receptive
field of 2048 samples) with tanh * sigmoid units and 1x1 residual and skip
convolutions, then relu-1x1-relu-1x1 to 256 logits. Trained for a few steps next to the
same model built from ``nn.Conv1d`` after ``F.pad`` (same initial weights, same
batches): the loss of both per step and the seconds per training step. Then greedy
generation two ways with the fastdl model:

(a) naive: for every new sample, the whole stack over the last receptive field of
    samples (2048), keeping the last output;
(b) queues (Paine et al. 2016, "Fast Wavenet Generation"): every causal layer keeps the
    last dilation * (k - 1) inputs it needs in a ring buffer (``layer.init_state``), so
    a new sample costs one small matrix-vector product per layer
    (``layer.step(x_t, state)``), whatever the receptive field.

It checks that (a) and (b) pick the same samples with the same logits, and prints the
time per sample of each and the speedup.

The waveform: a sum of three sines (220, 330 and 440 Hz at 8 kHz) with slowly varying
amplitudes and a little noise, mu-law quantised to 256 classes.

    python examples/wavenet.py            # 2 cycles of 1..512, 32 channels, 10 steps: ~1-2 minutes on 2 cores
    python examples/wavenet.py --quick    # smoke run: 1 cycle of 1..32, 16 channels, a few seconds
"""

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

import fastdl

CLASSES = 256


def mu_law_waveform(length: int, generator: torch.Generator) -> torch.Tensor:
    """``length`` samples of the synthetic signal, as mu-law classes in [0, 256)."""
    t = torch.arange(length, dtype=torch.float64) / 8000.0
    wave = sum(amplitude * (1 + 0.5 * torch.sin(2 * math.pi * wobble * t))
               * torch.sin(2 * math.pi * frequency * t)
               for frequency, amplitude, wobble in ((220, 0.3, 0.5), (330, 0.2, 0.7),
                                                    (440, 0.15, 1.1)))
    noise = 0.01 * torch.randn(length, generator=generator, dtype=torch.float64)
    wave = (wave + noise).clamp(-1, 1)
    mu = CLASSES - 1
    companded = torch.sign(wave) * torch.log1p(mu * wave.abs()) / math.log1p(mu)
    return ((companded + 1) / 2 * mu).round().long()


def pointwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution on one time step x (N, C)."""
    return F.linear(x, conv.weight.squeeze(2), conv.bias)


class WaveNet(nn.Module):
    """``fastdl_layers``: causal ``fastdl.nn.DilatedConv1d``; else ``nn.Conv1d`` after
    ``F.pad(x, (dilation, 0))``. Both have the same parameters and state_dict keys."""

    def __init__(self, dilations, residual: int, gate: int, skip: int, fastdl_layers: bool):
        super().__init__()
        self.dilations, self.fastdl_layers = dilations, fastdl_layers
        self.embed = nn.Embedding(CLASSES, residual)
        self.causal = self._causal_conv(residual, residual, 1)
        self.dilated = nn.ModuleList(self._causal_conv(residual, 2 * gate, d) for d in dilations)
        self.residual = nn.ModuleList(nn.Conv1d(gate, residual, 1) for _ in dilations)
        self.skip = nn.ModuleList(nn.Conv1d(gate, skip, 1) for _ in dilations)
        self.head = nn.Conv1d(skip, skip, 1)
        self.out = nn.Conv1d(skip, CLASSES, 1)

    def _causal_conv(self, cin, cout, dilation):
        if self.fastdl_layers:
            return fastdl.nn.DilatedConv1d(cin, cout, 2, dilation=dilation, causal=True)
        return nn.Conv1d(cin, cout, 2, dilation=dilation)

    @property
    def receptive_field(self) -> int:
        return 1 + 1 + sum(self.dilations)

    def _run(self, conv, x, state):
        if state is not None:                       # a chunk after what the queue holds
            return conv.step(x, state)
        if self.fastdl_layers:
            return conv(x)
        return conv(F.pad(x, (conv.dilation[0], 0)))

    def forward(self, samples, states=None):
        """samples (N, T) classes -> logits (N, 256, T). With ``states`` (fastdl model),
        the chunk continues the sequences the queues hold, and fills them."""
        state = iter(states) if states is not None else iter(lambda: None, 0)
        x = self._run(self.causal, self.embed(samples).transpose(1, 2), next(state))
        skips = 0
        for dilated, residual, skip in zip(self.dilated, self.residual, self.skip):
            a, b = self._run(dilated, x, next(state)).chunk(2, dim=1)
            z = torch.tanh(a) * torch.sigmoid(b)
            x, skips = x + residual(z), skips + skip(z)
        return self.out(F.relu(self.head(F.relu(skips))))

    def init_states(self, batch: int):
        """One queue per causal layer (fastdl model)."""
        return [self.causal.init_state(batch)] + [d.init_state(batch) for d in self.dilated]

    def step(self, sample, states):
        """One new sample (N,) per sequence -> logits (N, 256): O(1) per layer."""
        x = self.causal.step(self.embed(sample), states[0])
        skips = 0
        for dilated, residual, skip, state in zip(self.dilated, self.residual, self.skip,
                                                  states[1:]):
            a, b = dilated.step(x, state).chunk(2, dim=1)
            z = torch.tanh(a) * torch.sigmoid(b)
            x, skips = x + pointwise(residual, z), skips + pointwise(skip, z)
        return pointwise(self.out, F.relu(pointwise(self.head, F.relu(skips))))


@torch.no_grad()
def generate_naive(model, seed, new_samples):
    """(a): the whole stack over the last receptive field for every sample."""
    window, samples, logits = model.receptive_field, seed, []
    for _ in range(new_samples):
        step = model(samples[:, -window:])[:, :, -1]
        logits.append(step)
        samples = torch.cat([samples, step.argmax(1, keepdim=True)], dim=1)
    return samples[:, seed.shape[1]:], torch.stack(logits, 1)


@torch.no_grad()
def generate_queues(model, seed, new_samples):
    """(b): the seed once through the stack as a chunk (filling the queues), then one
    ``step`` per sample. Also returns the seconds of the seed pass and of the steps."""
    tic = time.perf_counter()
    states = model.init_states(seed.shape[0])
    step = model(seed, states)[:, :, -1]
    prefill_s, tic = time.perf_counter() - tic, time.perf_counter()
    samples, logits = [], [step]
    for _ in range(new_samples - 1):
        samples.append(step.argmax(1))
        step = model.step(samples[-1], states)
        logits.append(step)
    samples.append(step.argmax(1))
    return torch.stack(samples, 1), torch.stack(logits, 1), prefill_s, time.perf_counter() - tic


def timed(fn, *args):
    tic = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 3 steps")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    if args.quick:
        cycles, top, channels, skip_channels, batch, length, steps = 1, 32, 16, 32, 2, 128, 3
        naive_samples, queue_samples = 8, 32
    else:
        cycles, top, channels, skip_channels, batch, length = 2, 512, 32, 64, 2, 4096
        steps = args.steps
        naive_samples, queue_samples = 24, 300
    dilations = [2 ** i for i in range(int(math.log2(top)) + 1)] * cycles

    generator = torch.Generator().manual_seed(0)
    data = mu_law_waveform(200_000, generator)
    torch.manual_seed(0)
    models = {name: WaveNet(dilations, channels, channels, skip_channels, fastdl_layers)
              for name, fastdl_layers in (("fastdl.nn.DilatedConv1d", True),
                                          ("nn.Conv1d + F.pad", False))}
    fastdl_model, torch_model = models.values()
    torch_model.load_state_dict(fastdl_model.state_dict())    # the same initial weights
    print(f"waveform: {len(data)} samples, 3 sines + noise at 8 kHz, mu-law to {CLASSES} classes")
    print(f"model: {len(dilations)} gated blocks (dilations 1..{top} x {cycles}), {channels} "
          f"residual/gate channels, {skip_channels} skip; receptive field "
          f"{fastdl_model.receptive_field} samples; batch {batch} x {length}, {steps} steps, "
          f"{torch.get_num_threads()} threads\n")

    optimizers = {name: torch.optim.Adam(m.parameters(), lr=2e-3) for name, m in models.items()}
    seconds = dict.fromkeys(models, 0.0)
    losses = {name: [] for name in models}
    print("| step | fastdl loss | nn.Conv1d loss | |diff| |")
    print("|---:|---:|---:|---:|")
    for step in range(steps):
        starts = torch.randint(0, len(data) - length - 1, (batch,), generator=generator)
        chunk = torch.stack([data[s:s + length + 1] for s in starts.tolist()])
        x, y = chunk[:, :-1], chunk[:, 1:]
        for name, model in models.items():          # in lockstep: both see the same load
            tic = time.perf_counter()
            optimizers[name].zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizers[name].step()
            if step > 0:                             # step 0 includes one-off warm-up
                seconds[name] += time.perf_counter() - tic
            losses[name].append(loss.item())
        a, b = (losses[name][-1] for name in models)
        print(f"| {step} | {a:.4f} | {b:.4f} | {abs(a - b):.1e} |", flush=True)
    gaps = [abs(a - b) for a, b in zip(*losses.values())]
    print(f"\nloss curves: max |diff| {max(gaps):.2e} over {steps} steps\n")
    print("| causal convolutions | s / training step | final loss |")
    print("|---|---:|---:|")
    for name in models:
        print(f"| {name} | {seconds[name] / max(steps - 1, 1):.4f} | {losses[name][-1]:.4f} |")

    fastdl_model.eval()
    seed = data[:fastdl_model.receptive_field].unsqueeze(0)
    generate_queues(fastdl_model, seed, 4)          # warm-up
    (naive, naive_logits), naive_s = timed(generate_naive, fastdl_model, seed, naive_samples)
    queued, queued_logits, prefill_s, queued_s = generate_queues(fastdl_model, seed, queue_samples)
    same = torch.equal(naive, queued[:, :naive_samples])
    gap = (naive_logits - queued_logits[:, :naive_samples]).abs().max().item()
    assert same and gap < 1e-3, f"queue generation differs: same samples {same}, logits {gap:.2e}"
    # The first queued sample comes from the seed pass; the others are one step each.
    naive_ms, queued_ms = naive_s / naive_samples * 1e3, queued_s / (queue_samples - 1) * 1e3
    print(f"\ngreedy generation after a {seed.shape[1]}-sample seed (batch 1):")
    print(f"  (a) naive, the stack over the last {fastdl_model.receptive_field} samples for each "
          f"sample: {naive_ms:.2f} ms / sample ({naive_samples} samples)")
    print(f"  (b) queues, one step per layer: {queued_ms:.3f} ms / sample ({queue_samples - 1} "
          f"samples; the seed pass that fills the queues: {prefill_s * 1e3:.1f} ms, once)")
    print(f"  speedup: {naive_ms / queued_ms:.1f}x per sample")
    # Re-running the full convolution over everything generated so far (not just the
    # receptive field) costs what a pass over the whole sequence costs, per sample.
    clip = 1000 if args.quick else 16000
    with torch.no_grad():
        full_s = min(timed(fastdl_model, data[:clip].unsqueeze(0))[1] for _ in range(3))
    print(f"  (c) re-running the full convolution over a {clip}-sample sequence, per sample "
          f"at its end: {full_s * 1e3:.2f} ms; queues {full_s * 1e3 / queued_ms:.1f}x faster")
    print(f"  queue parity: ok (same {naive_samples} samples, logits max |diff| {gap:.1e})")
    print(f"  generated classes: {queued[0, :24].tolist()}")


if __name__ == "__main__":
    main()
