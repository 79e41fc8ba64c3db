"""fastdl.nn.MultiheadAttention against nn.MultiheadAttention loaded with the same
weights: outputs, weights, input and parameter gradients."""

from unittest import mock

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import fastdl
from conftest import TOLERANCES, TOLERANCES_VS_FLOAT64

EMBED, HEADS, L, S, N = 8, 2, 5, 7, 3


def pair(dtype=torch.float64, **kwargs):
    """(nn.MultiheadAttention, fastdl.nn.MultiheadAttention) with the same random weights
    (biases too: torch initialises them to zero)."""
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(EMBED, HEADS, dtype=dtype, **kwargs)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_(0, 0.5)
    layer = fastdl.nn.MultiheadAttention(EMBED, HEADS, dtype=dtype, **kwargs)
    layer.load_state_dict(reference.state_dict())
    return reference, layer


def inputs(dtype, batch_first=False, kdim=EMBED, vdim=EMBED, batched=True, self_attention=False):
    def make(length, features):
        shape = ((N, length) if batch_first else (length, N)) if batched else (length,)
        return torch.randn(*shape, features, dtype=dtype, requires_grad=True)
    query = make(L, EMBED)
    if self_attention:
        return query, query, query
    return query, make(S, kdim), make(S, vdim)


def key_padding_mask(kind, keys=S, batch=N, dtype=torch.float64):
    """Some keys of some sequences ignored, never all of a sequence's keys."""
    ignore = torch.zeros(batch, keys, dtype=torch.bool)
    ignore[0, -2:] = True
    ignore[-1, 1] = True
    if kind == "bool":
        return ignore
    return torch.randn(batch, keys, dtype=dtype).masked_fill(ignore, float("-inf"))


def attn_mask(kind, dims, queries=L, keys=S, batch=N, dtype=torch.float64):
    torch.manual_seed(1)
    shape = (queries, keys) if dims == 2 else (batch * HEADS, queries, keys)
    forbid = torch.rand(shape) < 0.4
    forbid[..., 0] = False          # every query sees a key
    return forbid if kind == "bool" else torch.randn(shape, dtype=dtype).masked_fill(forbid, float("-inf"))


def check(reference, layer, args, kwargs, dtype):
    """Forward and backward of both layers agree: outputs, weights, gradients of the
    inputs and of every parameter."""
    expected, expected_weights = reference(*args, **kwargs)
    grads = [a for a in dict.fromkeys(args) if a.requires_grad]
    got, got_weights = layer(*args, **kwargs)
    tolerance = TOLERANCES[dtype]
    assert_close(got, expected, **tolerance)
    if expected_weights is None:
        assert got_weights is None
    else:
        assert_close(got_weights, expected_weights, **tolerance)
    upstream = torch.randn_like(expected)
    loss = lambda out, weights: (out * upstream).sum() + (0 if weights is None else
                                                          (weights ** 2).sum())
    want = torch.autograd.grad(loss(expected, expected_weights), grads + list(reference.parameters()))
    have = torch.autograd.grad(loss(got, got_weights), grads + list(layer.parameters()))
    for w, h in zip(want, have):  # parameter gradients are sums over batch and positions
        assert_close(h, w, **TOLERANCES_VS_FLOAT64[dtype])


CONFIGS = [dict(), dict(batch_first=True), dict(kdim=5, vdim=3), dict(bias=False),
           dict(add_bias_kv=True), dict(add_zero_attn=True),
           dict(add_bias_kv=True, add_zero_attn=True, batch_first=True)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(c) or "default")
@pytest.mark.parametrize("need_weights", [True, False])
def test_parity(config, dtype, need_weights):
    reference, layer = pair(dtype, **config)
    args = inputs(dtype, config.get("batch_first", False), config.get("kdim", EMBED),
                  config.get("vdim", EMBED))
    check(reference, layer, args, dict(need_weights=need_weights), dtype)


# (key_padding_mask, attn_mask kind-dims); mixed kinds in test_mixed_mask_kinds
MASKS = [(kpm, mask) for kpm in (None, "bool", "float")
         for mask in (None, "bool-2", "float-2", "bool-3", "float-3")
         if kpm is None or mask is None or mask.startswith(kpm)]


@pytest.mark.parametrize("kpm, mask", MASKS)
@pytest.mark.parametrize("config", [dict(), dict(add_bias_kv=True, add_zero_attn=True)],
                         ids=["default", "extra-keys"])
def test_masks(kpm, mask, config):
    dtype = torch.float64
    reference, layer = pair(dtype, **config)
    kwargs = dict(key_padding_mask=None if kpm is None else key_padding_mask(kpm),
                  attn_mask=None if mask is None else attn_mask(*mask.split("-")[0:1],
                                                                int(mask[-1])),
                  average_attn_weights=mask != "bool-3")
    check(reference, layer, inputs(dtype), kwargs, dtype)


def test_mixed_mask_kinds():
    """A boolean key_padding_mask with a float attn_mask: one additive mask."""
    reference, layer = pair()
    kwargs = dict(key_padding_mask=key_padding_mask("bool"), attn_mask=attn_mask("float", 2))
    with pytest.warns(UserWarning, match="mismatched"):  # torch's, not ours
        check(reference, layer, inputs(torch.float64), kwargs, torch.float64)


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
def test_self_attention_unbatched_and_batched(need_weights, batch_first):
    reference, layer = pair(batch_first=batch_first)
    for batched in (True, False):
        args = inputs(torch.float64, batch_first, batched=batched, self_attention=True)
        kwargs = dict(need_weights=need_weights, average_attn_weights=False,
                      key_padding_mask=key_padding_mask("bool", L) if batched
                      else key_padding_mask("bool", L)[0],
                      attn_mask=attn_mask("float", 3, L, L, N if batched else 1))
        check(reference, layer, args, kwargs, torch.float64)


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("with_padding", [False, True])
def test_is_causal_with_causal_mask(need_weights, with_padding):
    reference, layer = pair(batch_first=True)
    args = inputs(torch.float64, batch_first=True, self_attention=True)
    causal = nn.Transformer.generate_square_subsequent_mask(L, dtype=torch.float64)
    kwargs = dict(attn_mask=causal, is_causal=True, need_weights=need_weights,
                  key_padding_mask=key_padding_mask("float", L) if with_padding else None)
    check(reference, layer, args, kwargs, torch.float64)
    with pytest.raises(RuntimeError, match="attn_mask must be given"):
        layer(*args, is_causal=True)


def test_train_mode_without_dropout_matches():
    reference, layer = pair()
    reference.train(), layer.train()
    check(reference, layer, inputs(torch.float64), {}, torch.float64)


def test_dropout_is_seeded_and_only_in_training():
    _, layer = pair(torch.float32, dropout=0.5)
    args = inputs(torch.float32)
    layer.train()
    torch.manual_seed(3)
    first, _ = layer(*args, need_weights=False)
    torch.manual_seed(3)
    again, _ = layer(*args, need_weights=False)
    torch.manual_seed(4)
    other, _ = layer(*args, need_weights=False)
    assert first.shape == (L, N, EMBED)
    assert torch.equal(first, again) and not torch.equal(first, other)
    first.sum().backward()
    assert layer.in_proj_weight.grad is not None
    layer.eval()
    plain, _ = layer(*args, need_weights=False)
    assert torch.equal(plain, layer(*args, need_weights=False)[0])
    assert not torch.allclose(plain, first)


def test_compile_fullgraph():
    reference, layer = pair(torch.float32, batch_first=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    args = inputs(torch.float32, batch_first=True)
    kwargs = dict(key_padding_mask=key_padding_mask("bool"), need_weights=False)
    got, _ = compiled(*args, **kwargs)
    expected, _ = reference(*args, **kwargs)
    assert_close(got, expected, **TOLERANCES[torch.float32])
    got.sum().backward()
    assert args[0].grad is not None


def test_state_dict_both_ways_and_from_torch():
    reference, layer = pair(kdim=5, vdim=3, add_bias_kv=True)
    assert list(layer.state_dict()) == list(reference.state_dict())
    back = nn.MultiheadAttention(EMBED, HEADS, kdim=5, vdim=3, add_bias_kv=True,
                                 dtype=torch.float64)
    back.load_state_dict(layer.state_dict())
    shared = fastdl.nn.MultiheadAttention.from_torch(reference.eval())
    assert shared.q_proj_weight is reference.q_proj_weight and not shared.training
    args = inputs(torch.float64, kdim=5, vdim=3)
    assert_close(shared(*args)[0], back(*args)[0], **TOLERANCES[torch.float64])
    assert "kdim=5, vdim=3" in repr(shared) and "add_bias_kv=True" in repr(shared)


def test_bad_masks_name_the_argument():
    _, layer = pair()
    args = inputs(torch.float64)
    with pytest.raises(ValueError, match="key_padding_mask must have shape \\(3, 7\\)"):
        layer(*args, key_padding_mask=torch.zeros(3, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask must have shape \\(5, 7\\) or \\(6, 5, 7\\)"):
        layer(*args, attn_mask=torch.zeros(4, 7, dtype=torch.bool))
    # integer masks: torch's layer refuses them too (they were read as additive)
    with pytest.raises(TypeError, match="key_padding_mask must be boolean or floating, got torch.int32"):
        layer(*args, key_padding_mask=torch.zeros(3, 7, dtype=torch.int32))
    with pytest.raises(TypeError, match="attn_mask must be boolean or floating, got torch.int64"):
        layer(*args, attn_mask=torch.ones(5, 7, dtype=torch.int64))


@pytest.mark.parametrize("training", [False, True])
def test_convert_transformer_encoder(training):
    """TransformerEncoderLayer calls self_attn with need_weights=False; in eval under
    no_grad torch's layer takes its fused fast path, which the fastdl layer must not
    be bypassed by."""
    torch.manual_seed(0)
    encoder = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True),
        num_layers=2, enable_nested_tensor=True).train(training)
    converted, report = fastdl.convert(encoder)
    assert all(isinstance(layer.self_attn, fastdl.nn.MultiheadAttention)
               for layer in converted.layers)
    assert [name for name, _, _ in report.swapped] == ["layers.0.self_attn",
                                                      "layers.1.self_attn", ""]
    x = torch.randn(2, 6, 16)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[1, 4:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(6)
    with torch.set_grad_enabled(training), \
            mock.patch.object(fastdl.ops, "attention", wraps=fastdl.ops.attention) as kernel:
        # torch's nested-tensor path leaves padded positions at 0: compare the others
        assert_close(converted(x, src_key_padding_mask=padding)[~padding],
                     encoder(x, src_key_padding_mask=padding)[~padding], rtol=1e-4, atol=1e-5)
        assert_close(converted(x, mask=causal, is_causal=True),
                     encoder(x, mask=causal, is_causal=True), rtol=1e-4, atol=1e-5)
    assert kernel.call_count == 4  # fastdl's self_attn ran, not torch's fused layer
