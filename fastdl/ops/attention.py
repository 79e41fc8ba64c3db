"""Fused scaled dot-product attention: ``F.scaled_dot_product_attention`` in one op.

``softmax(scale * q k^T + attn_mask) v`` computed tile by tile with an online softmax
(FlashAttention-2): memory is O(N) in the sequence length, never an (Nq, Nk) matrix.
The backward recomputes the weights from the saved log-sum-exp.

- Shapes: ``query (B, Hq, Nq, D)``, ``key (B, Hkv, Nk, D)``, ``value (B, Hkv, Nk, Dv)``
  (or the same without the head dimension). ``Hq`` a multiple of ``Hkv``: grouped-query
  attention, query head ``h`` reading kv head ``h // (Hq // Hkv)``. Any ``Nq``, ``Nk``
  (``Nq != Nk`` included); any strides with a contiguous last dimension are read in
  place, so slicing a KV cache (``cache[:, :, :length]``) costs no copy.
- ``attn_mask``: boolean (True = attend) or additive (query's dtype), broadcastable to
  ``(B, Hq, Nq, Nk)``; not differentiable. ``is_causal``: query row ``i`` sees keys
  ``j <= i`` (top-left aligned, as SDPA). Rows with every key masked give 0.
- ``dropout_p``: dropout on the attention weights, from a counter-based hash of
  ``seed`` (drawn from torch's default generator when not given), regenerated in
  the backward; the same seed gives the same result on CPU and CUDA. Drawing the seed
  reads a value to the host, so under ``torch.compile(fullgraph=True)`` pass ``seed``
  when ``dropout_p > 0``.
- dtypes: float32 and float64 on CPU and CUDA; float16 and bfloat16 on CUDA (tensor
  cores) and on CPU (computed in float32).
"""

import math

import torch
from torch import Tensor

from ._utils import call_op, check_device, mark_saved_outputs, register_autocast, register_autograd


def _with_heads(t: Tensor | None, name: str) -> Tensor | None:
    if t is None or t.dim() == 4:
        return t
    if t.dim() == 3:
        return t.unsqueeze(1)
    raise ValueError(f"fastdl.attention: {name} must have shape (B, H, N, D) or (B, N, D), "
                     f"got {tuple(t.shape)}")


def attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
              is_causal: bool = False, scale: float | None = None, dropout_p: float = 0.0,
              seed: int | None = None) -> Tensor:
    """``F.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal,
    scale, enable_gqa=True)`` with fastdl's fused kernels; see the module docstring."""
    tensors = dict(query=query, key=key, value=value)
    if attn_mask is not None:
        tensors["attn_mask"] = attn_mask
        if attn_mask.requires_grad:
            raise NotImplementedError(
                "fastdl.attention: attn_mask must not require grad (its gradient is not computed)")
    check_device("attention", **tensors)
    unbatched_heads = query.dim() == 3
    q, k, v = (_with_heads(t, n) for t, n in ((query, "query"), (key, "key"), (value, "value")))
    if unbatched_heads and attn_mask is not None and attn_mask.dim() == 3:
        attn_mask = attn_mask.unsqueeze(1)  # (B, Nq, Nk) lines up with (B, 1, Nq, Nk)
    if scale is None:  # D = 0 is refused by the op's own check, with its message
        scale = 1.0 / math.sqrt(query.shape[-1]) if query.shape[-1] > 0 else 1.0
    if dropout_p > 0 and seed is None:
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    output, _ = call_op(torch.ops.fastdl.attention.default, q, k, v, attn_mask, is_causal,
                        float(scale), float(dropout_p), 0 if seed is None else seed)
    return output.squeeze(1) if unbatched_heads else output


def _stats_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


@torch.library.register_fake("fastdl::attention")
def _attention_fake(q, k, v, attn_mask, is_causal, scale, dropout_p, seed):
    b, h, n, _ = q.shape
    output = q.new_empty((b, h, n, v.shape[-1]))
    return output, q.new_empty((b, h, n), dtype=_stats_dtype(q))


@torch.library.register_fake("fastdl::attention_backward")
def _attention_backward_fake(grad_output, q, k, v, output, logsumexp, attn_mask, is_causal, scale,
                             dropout_p, seed):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    q, k, v, attn_mask, is_causal, scale, dropout_p, seed = inputs
    out, logsumexp = output
    ctx.save_for_backward(q, k, v, out, logsumexp, attn_mask)
    ctx.options = (is_causal, scale, dropout_p, seed)
    mark_saved_outputs(ctx, logsumexp)  # for the backward only: its gradient arrives as None


def _backward(ctx, grad_output, _grad_logsumexp):
    if grad_output is None:  # an undefined gradient (gradcheck checks them): zeros in, zeros out
        return (None,) * 8
    q, k, v, out, logsumexp, attn_mask = ctx.saved_tensors
    grad_q, grad_k, grad_v = torch.ops.fastdl.attention_backward.default(
        grad_output, q, k, v, out, logsumexp, attn_mask, *ctx.options)
    return grad_q, grad_k, grad_v, None, None, None, None, None


register_autograd("fastdl::attention", _backward, setup_context=_setup_context)
register_autocast("fastdl::attention", "fastdl::attention_backward")
