"""A tiny character-level GPT on the Python standard library's own source: token
embedding + learned positions, pre-LN blocks of causal self-attention on
``fastdl.ops.attention`` and an MLP, a linear head. Trained for a few steps next to the
same model with ``F.scaled_dot_product_attention`` in place of fastdl (same initial
weights, same batches): the loss of both per step and the seconds per training step.
Then greedy generation two ways with the fastdl model:

(a) recompute: the whole sequence through the model for every new token;
(b) KV cache: keys and values in preallocated ``(B, H, max_T, D)`` tensors; each step
    runs only the new token, writes its k/v at position t and attends with
    ``fastdl.ops.attention(q_t, k_cache[:, :, :t+1], v_cache[:, :, :t+1])`` (a strided
    view, read in place; no causal flag: the one new query sees every cached key).

It checks that (a) and (b) pick the same tokens with the same logits, and prints the
time per token of each and the speedup.

    python examples/tiny_gpt.py            # 4 layers x 128, 120 steps: ~1-2 minutes on 2 cores
    python examples/tiny_gpt.py --quick    # smoke run: 2 layers x 32, 8 steps, a few seconds
"""

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

import fastdl
from char_lstm import corpus  # the same stdlib text (examples/ is on sys.path)

def fastdl_attention(q, k, v, is_causal):
    return fastdl.ops.attention(q, k, v, is_causal=is_causal)


def sdpa_attention(q, k, v, is_causal):
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, attend):
        super().__init__()
        self.heads, self.attend = heads, attend
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x, cache=None, position=0):
        """x (B, T, C). With ``cache = (k_cache, v_cache)`` the T new tokens' keys and
        values are written at ``position`` and the queries attend to everything cached."""
        batch, length, width = x.shape
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2)    # (B, H, T, D) views
                   for t in self.qkv(self.ln1(x)).chunk(3, dim=-1))
        if cache is None:
            y = self.attend(q, k, v, is_causal=True)
        else:
            k_cache, v_cache = cache
            end = position + length
            k_cache[:, :, position:end], v_cache[:, :, position:end] = k, v
            # A prompt (several new queries) still needs the causal mask; one new query
            # sees every cached key.
            y = self.attend(q, k_cache[:, :, :end], v_cache[:, :, :end], is_causal=length > 1)
        x = x + self.proj(y.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, width: int, heads: int, layers: int, max_len: int, attend):
        super().__init__()
        self.max_len = max_len
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(max_len, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads, attend) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, idx, caches=None, position=0):
        x = self.embed(idx) + self.position[position:position + idx.shape[1]]
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i], position)
        return self.head(self.ln(x))

    def new_caches(self, batch: int):
        """Per block, zeroed (B, H, max_len, D) key and value tensors."""
        like = self.position
        return [tuple(like.new_zeros(batch, b.heads, self.max_len, like.shape[1] // b.heads)
                      for _ in range(2)) for b in self.blocks]


@torch.no_grad()
def generate_recompute(model, prompt, new_tokens):
    """(a): every step runs the whole sequence so far; returns (tokens, last logits)."""
    idx, logits = prompt, []
    for _ in range(new_tokens):
        step = model(idx)[:, -1]
        logits.append(step)
        idx = torch.cat([idx, step.argmax(-1, keepdim=True)], dim=1)
    return idx, torch.stack(logits, 1)


@torch.no_grad()
def generate_cached(model, prompt, new_tokens):
    """(b): the prompt once (filling the caches), then one token per step."""
    caches = model.new_caches(prompt.shape[0])
    step = model(prompt, caches, 0)[:, -1]
    idx, logits = prompt, [step]
    for _ in range(new_tokens - 1):
        idx = torch.cat([idx, step.argmax(-1, keepdim=True)], dim=1)
        step = model(idx[:, -1:], caches, idx.shape[1] - 1)[:, -1]
        logits.append(step)
    idx = torch.cat([idx, step.argmax(-1, keepdim=True)], dim=1)
    return idx, torch.stack(logits, 1)


def timed(fn, *args):
    tic = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 8 steps")
    parser.add_argument("--steps", type=int, default=120)
    args = parser.parse_args()
    if args.quick:
        max_chars, width, heads, layers, seq_len, batch, steps, log_every = 20_000, 32, 2, 2, 32, 8, 8, 2
        prompt_len, new_tokens = 8, 24
    else:
        max_chars, width, heads, layers, seq_len, batch, steps, log_every = 300_000, 128, 4, 4, 128, 16, args.steps, 10
        prompt_len, new_tokens = 16, 112

    text = corpus(max_chars)
    chars = sorted(set(text))
    index = {ch: i for i, ch in enumerate(chars)}
    data = torch.tensor([index[ch] for ch in text])
    print(f"corpus: {len(text)} characters of standard-library source, vocabulary {len(chars)}")
    print(f"model: {layers} blocks x width {width}, {heads} heads of {width // heads}, context "
          f"{seq_len}; batch {batch} x {seq_len}, {steps} steps, {torch.get_num_threads()} threads\n")

    torch.manual_seed(0)
    models = {"fastdl.ops.attention": TinyGPT(len(chars), width, heads, layers, seq_len,
                                              fastdl_attention),
              "F.scaled_dot_product_attention": TinyGPT(len(chars), width, heads, layers, seq_len,
                                                        sdpa_attention)}
    fastdl_model, sdpa_model = models.values()
    sdpa_model.load_state_dict(fastdl_model.state_dict())     # the same initial weights
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=3e-3) for name, m in models.items()}
    seconds = dict.fromkeys(models, 0.0)
    losses = {name: [] for name in models}

    generator = torch.Generator().manual_seed(0)
    print("| step | fastdl loss | SDPA loss | |diff| |")
    print("|---:|---:|---:|---:|")
    for step in range(steps):
        starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=generator)
        chunk = torch.stack([data[s:s + seq_len + 1] for s in starts.tolist()])
        x, y = chunk[:, :-1], chunk[:, 1:]
        for name, model in models.items():       # in lockstep: both see the same load
            tic = time.perf_counter()
            optimizers[name].zero_grad()
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            loss.backward()
            optimizers[name].step()
            if step > 0:                          # step 0 includes one-off warm-up
                seconds[name] += time.perf_counter() - tic
            losses[name].append(loss.item())
        if step % log_every == 0 or step == steps - 1:
            a, b = (losses[name][-1] for name in models)
            print(f"| {step} | {a:.4f} | {b:.4f} | {abs(a - b):.1e} |", flush=True)
    gaps = [abs(a - b) for a, b in zip(*losses.values())]
    print(f"\nloss curves: max |diff| {max(gaps):.2e} over {steps} steps\n")
    print("| attention | s / training step | final loss |")
    print("|---|---:|---:|")
    for name in models:
        print(f"| {name} | {seconds[name] / max(steps - 1, 1):.4f} | {losses[name][-1]:.4f} |")

    fastdl_model.eval()
    prompt = data[:prompt_len].unsqueeze(0)
    generate_cached(fastdl_model, prompt, 2)      # warm-up
    (full_idx, full_logits), full_s = timed(generate_recompute, fastdl_model, prompt, new_tokens)
    (cached_idx, cached_logits), cached_s = timed(generate_cached, fastdl_model, prompt, new_tokens)
    same = torch.equal(full_idx, cached_idx)
    gap = (full_logits - cached_logits).abs().max().item()
    assert same and gap < 1e-3, f"KV-cache generation differs: same tokens {same}, logits {gap:.2e}"
    print(f"\ngreedy generation, {new_tokens} tokens after a {prompt_len}-character prompt:")
    print(f"  (a) recompute: {full_s / new_tokens * 1e3:.2f} ms / token")
    print(f"  (b) KV cache:  {cached_s / new_tokens * 1e3:.2f} ms / token  "
          f"({full_s / cached_s:.1f}x faster)")
    print(f"  KV cache parity: ok (same tokens, logits max |diff| {gap:.1e})\n")
    print("".join(chars[i] for i in full_idx[0].tolist()))


if __name__ == "__main__":
    main()
