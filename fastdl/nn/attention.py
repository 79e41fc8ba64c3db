"""``MultiheadAttention``: a drop-in for ``nn.MultiheadAttention`` whose attention runs
on ``fastdl.ops.attention`` (the fused, O(N)-memory kernel)."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ._fx import leaf_forward


def _decline_fused_encoder_path(module, args):
    """A forward pre-hook that does nothing. ``nn.TransformerEncoderLayer``'s inference
    fast path (``torch._transformer_encoder_layer_fwd``) reads ``self_attn``'s weights
    and never calls its ``forward``; it is declined when a submodule has hooks."""


def _as_attend(mask: Tensor) -> Tensor:
    """A torch MHA mask (bool True = ignore, or additive) in fastdl's convention (bool
    True = attend, or additive)."""
    return mask.logical_not() if mask.dtype == torch.bool else mask


def _merge_masks(first: Tensor | None, second: Tensor | None, dtype: torch.dtype):
    """One mask from two in fastdl's convention: both boolean -> their AND, else the sum
    of their additive forms (a boolean False becoming -inf)."""
    if first is None or second is None:
        mask = second if first is None else first
        return mask if mask is None or mask.dtype == torch.bool else mask.to(dtype)
    if first.dtype == torch.bool and second.dtype == torch.bool:
        return first & second
    additive = [m.to(dtype) if m.dtype != torch.bool else
                torch.zeros((), dtype=dtype, device=m.device).masked_fill(~m, float("-inf"))
                for m in (first, second)]
    return additive[0] + additive[1]


def _pad_key_column(mask: Tensor | None) -> Tensor | None:
    """One more key, always attended (for ``bias_k``/``bias_v`` and ``add_zero_attn``)."""
    if mask is None:
        return None
    return F.pad(mask, (0, 1), value=mask.dtype == torch.bool or 0.0)


class MultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose attention ``softmax(q k^T / sqrt(d) + mask) v`` is
    ``fastdl.ops.attention``; the projections are ``F.linear``.

    The same constructor, parameters (``in_proj_weight`` or ``q/k/v_proj_weight`` when
    ``kdim``/``vdim`` differ from ``embed_dim``, ``in_proj_bias``, ``bias_k``,
    ``bias_v``, ``out_proj``), initialisation and ``state_dict`` as the torch layer, of
    which it is a subclass, and the same ``forward``: batched ``(L, N, E)`` (``(N, L,
    E)`` with ``batch_first``) or unbatched ``(L, E)`` input; ``key_padding_mask``
    ``(N, S)`` and ``attn_mask`` ``(L, S)`` or ``(N * num_heads, L, S)``, boolean (True =
    *not* allowed to attend, torch's MHA convention) or additive float;
    ``add_bias_kv``, ``add_zero_attn``, dropout on the attention weights in training.

    - ``need_weights=True`` (torch's default) also returns the ``(N, L, S)`` weights
      (``(N, num_heads, L, S)`` with ``average_attn_weights=False``). The fused kernel
      never forms them, so in that case, and only then, they are computed with the
      explicit math (``softmax(q k^T / sqrt(d) + mask)``, an O(L * S) tensor per head,
      differentiable) next to the kernel's output, which is the layer's output either
      way. Pass ``need_weights=False`` for the O(L) path alone, as
      ``nn.TransformerEncoderLayer`` and ``nn.TransformerDecoderLayer`` do. In training
      with ``dropout > 0`` the weights returned are those before dropout (torch returns
      them after its own, differently drawn, dropout).
    - ``key_padding_mask`` and ``attn_mask`` are merged into one mask broadcastable to
      ``(N, num_heads, L, S)``: ``(N, 1, 1, S)``, ``(1, 1, L, S)`` or their
      ``(N, 1, L, S)`` combination; a full ``(N, num_heads, L, S)`` mask only when
      ``attn_mask`` is 3-D. Both boolean stay boolean; otherwise additive.
    - ``is_causal=True`` is torch's hint that ``attn_mask`` is the causal mask (which
      must be given): without ``key_padding_mask``, ``bias_k`` or ``add_zero_attn``,
      the kernel's causal path runs instead of reading the mask.
    - A query whose keys are all masked gets output 0 (torch gives NaN).
    - float32, float64 (and float16 / bfloat16 as ``fastdl.ops.attention``), CPU and
      CUDA; ``torch.compile(fullgraph=True)`` works with ``need_weights=False`` (in
      training with ``dropout > 0``, drawing the dropout seed on the host breaks the graph).

    Inside an ``nn.TransformerEncoderLayer``, whose inference fast path bypasses
    ``self_attn.forward``, this layer carries a no-op forward pre-hook so that the
    layer's regular path (and so this forward) runs.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_forward_pre_hook(_decline_fused_encoder_path)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> "MultiheadAttention":
        """A layer with ``mha``'s configuration, (shared) parameters and train/eval mode."""
        layer = cls(mha.embed_dim, mha.num_heads, mha.dropout, bias=mha.in_proj_bias is not None,
                    add_bias_kv=mha.bias_k is not None, add_zero_attn=mha.add_zero_attn,
                    kdim=mha.kdim, vdim=mha.vdim, batch_first=mha.batch_first, device="meta")
        for name, parameter in mha.named_parameters(recurse=False):
            setattr(layer, name, parameter)
        layer.out_proj = mha.out_proj
        layer.train(mha.training)
        return layer

    @leaf_forward
    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None = None, need_weights: bool = True,
                attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False):
        if query.dim() not in (2, 3):
            raise ValueError(f"MultiheadAttention: query must be 2-D (unbatched) or 3-D, "
                             f"got {query.dim()}-D")
        for name, mask in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
            if mask is not None and mask.dtype != torch.bool and not mask.is_floating_point():
                # torch's MHA refuses them too; read as additive, they were silently wrong
                raise TypeError(f"MultiheadAttention: {name} must be boolean or floating, "
                                f"got {mask.dtype}")
        if is_causal and attn_mask is None:
            raise RuntimeError("MultiheadAttention: is_causal is a hint that attn_mask is the "
                               "causal mask; attn_mask must be given too")
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        batch_dim = 0 if self.batch_first and batched else 1
        q, k, v = self._project_heads(query, key, value, batch_dim)
        batch, _, length, _ = q.shape
        mask, causal = self._merged_mask(key_padding_mask, attn_mask, is_causal, batch, length,
                                         k.shape[2], q.dtype)
        k, v, mask = self._extra_keys(k, v, mask)
        dropout_p = self.dropout if self.training else 0.0
        heads = ops.attention(q, k, v, None if causal else mask, is_causal=causal,
                              dropout_p=dropout_p)
        # (N, H, L, Dh) -> the input's layout, heads concatenated
        order = (0, 2, 1, 3) if batch_dim == 0 else (2, 0, 1, 3)
        output = self.out_proj(heads.permute(order).flatten(2))
        if not batched:
            output = output.squeeze(1)
        if not need_weights:
            return output, None
        weights = self._weights(q, k, mask)
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return output, weights if batched else weights.squeeze(0)

    def _project_heads(self, query: Tensor, key: Tensor, value: Tensor, batch_dim: int):
        """q, k, v as (N, H, length, head_dim) views of the projections (last dimension
        contiguous, so the kernel reads them in place)."""
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        if self._qkv_same_embed_dim and query is key and key is value:
            projected = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            projected = (F.linear(query, w_q, b_q), F.linear(key, w_k, b_k),
                         F.linear(value, w_v, b_v))
        order = (0, 2, 1, 3) if batch_dim == 0 else (1, 2, 0, 3)
        return tuple(p.unflatten(-1, (self.num_heads, self.head_dim)).permute(order)
                     for p in projected)

    def _merged_mask(self, key_padding_mask, attn_mask, is_causal, batch, length, keys, dtype):
        """(one mask in fastdl's convention broadcastable to (N, H, L, S) or None, whether
        the kernel's causal path replaces it)."""
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (batch, keys):
                raise ValueError(f"MultiheadAttention: key_padding_mask must have shape "
                                 f"{(batch, keys)}, got {tuple(key_padding_mask.shape)}")
            key_padding_mask = _as_attend(key_padding_mask).view(batch, 1, 1, keys)
        if attn_mask is not None:
            per_head = (batch * self.num_heads, length, keys)
            if attn_mask.shape == (length, keys):
                attn_mask = attn_mask.view(1, 1, length, keys)
            elif attn_mask.shape == per_head:
                attn_mask = attn_mask.view(batch, self.num_heads, length, keys)
            else:
                raise ValueError(f"MultiheadAttention: attn_mask must have shape "
                                 f"{(length, keys)} or {per_head}, got {tuple(attn_mask.shape)}")
            attn_mask = _as_attend(attn_mask)
        causal = (is_causal and key_padding_mask is None and self.bias_k is None
                  and not self.add_zero_attn)
        return _merge_masks(key_padding_mask, attn_mask, dtype), causal

    def _extra_keys(self, k: Tensor, v: Tensor, mask: Tensor | None):
        """``bias_k``/``bias_v`` and then ``add_zero_attn``'s zeros as one more key each,
        after the projected keys, as nn.MultiheadAttention adds them."""
        batch = k.shape[0]
        if self.bias_k is not None:
            def extra(bias):
                return bias.view(1, self.num_heads, 1, self.head_dim).expand(batch, -1, -1, -1)
            k, v = torch.cat([k, extra(self.bias_k)], 2), torch.cat([v, extra(self.bias_v)], 2)
            mask = _pad_key_column(mask)
        if self.add_zero_attn:
            k, v = (torch.cat([t, t.new_zeros(*t.shape[:2], 1, t.shape[3])], 2) for t in (k, v))
            mask = _pad_key_column(mask)
        return k, v, mask

    def _weights(self, q: Tensor, k: Tensor, mask: Tensor | None) -> Tensor:
        """(N, H, L, S) softmax weights by the explicit math: only for need_weights."""
        scores = torch.matmul(q * self.head_dim ** -0.5, k.transpose(-2, -1))
        if mask is not None:
            scores = (scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool
                      else scores + mask)
        return torch.softmax(scores, dim=-1)

    def extra_repr(self) -> str:
        text = f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"
        if self.dropout:
            text += f", dropout={self.dropout}"
        if self.kdim != self.embed_dim or self.vdim != self.embed_dim:
            text += f", kdim={self.kdim}, vdim={self.vdim}"
        if self.in_proj_bias is None:
            text += ", bias=False"
        if self.bias_k is not None:
            text += ", add_bias_kv=True"
        if self.add_zero_attn:
            text += ", add_zero_attn=True"
        if self.batch_first:
            text += ", batch_first=True"
        return text
