"""fastdl.ops.attention: parity with F.scaled_dot_product_attention (math backend, float64)
for the output and every gradient, over masks (boolean, additive, broadcast), causal,
grouped-query attention, Nq != Nk, odd lengths and head dimensions, strided inputs;
dropout (determinism, rate, exactness against the recovered pattern), empty problems,
gradcheck, opcheck, torch.compile, thread-count and ISA independence, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import fastdl
from conftest import CPU_ISAS, requires_cuda
from parity import assert_close, outputs_and_grads

OP = torch.ops.fastdl.attention.default
BACKWARD_OP = torch.ops.fastdl.attention_backward.default

# fastdl in the tested dtype against the float64 reference. float32: the outputs'
# error is rounding of sums over Nk; the gradients sum over Nq or Nk products of
# values up to ~10 (peaked softmax at |scale| sqrt(D) ~ 8), about twice torch's own
# float32 math-backend error there, so they get twice the bound. float16/bfloat16 on
# CPU compute in float32 and round the results; on CUDA the tensor cores also round P
# to 16 bits, so those get a looser bound.
VS_FLOAT64 = {
    torch.float64: dict(rtol=1e-10, atol=1e-11),
    torch.float32: dict(rtol=1e-5, atol=2e-5),
}
GRADS_VS_FLOAT64 = {
    torch.float64: VS_FLOAT64[torch.float64],
    torch.float32: dict(rtol=2e-5, atol=4e-5),
}
LOW_PRECISION = {
    ("cpu", torch.bfloat16): dict(rtol=2e-2, atol=2e-2),
    ("cpu", torch.float16): dict(rtol=3e-3, atol=3e-3),
    ("cuda", torch.bfloat16): dict(rtol=4e-2, atol=4e-2),
    ("cuda", torch.float16): dict(rtol=1e-2, atol=1e-2),
}


def causal_mask(nq, nk, device):
    """SDPA's is_causal: top-left aligned."""
    return torch.ones(nq, nk, dtype=torch.bool, device=device).tril()


def with_causal(attn_mask, nq, nk, device):
    """SDPA refuses attn_mask together with is_causal: fold the causal mask into it."""
    causal = causal_mask(nq, nk, device)
    if attn_mask is None:
        return causal
    if attn_mask.dtype == torch.bool:
        return attn_mask & causal
    return attn_mask.masked_fill(~causal, -math.inf)


def reference(q, k, v, attn_mask=None, is_causal=False, scale=None):
    """F.scaled_dot_product_attention, math backend, on float64 copies."""
    q, k, v = (t.double() for t in (q, k, v))
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        attn_mask = attn_mask.double()
    if is_causal:
        attn_mask = with_causal(attn_mask, q.shape[-2], k.shape[-2], q.device)
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale,
                                              enable_gqa=True)


def make_inputs(b, hq, hkv, nq, nk, d, dv, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dtype)
    return make(b, hq, nq, d), make(b, hkv, nk, d), make(b, hkv, nk, dv), make(b, hq, nq, dv)


def make_mask(kind, shape, dtype, device, seed=1):
    """A boolean (about 1 in 4 keys masked) or additive (random, some -inf) mask."""
    if kind is None:
        return None
    g = torch.Generator().manual_seed(seed)
    if kind == "bool":
        return (torch.rand(*shape, generator=g) > 0.25).to(device)
    additive = torch.randn(*shape, generator=g, dtype=torch.float64)
    additive[torch.rand(*shape, generator=g) < 0.1] = -math.inf
    return additive.to(device, dtype)


def doubles(*tensors):
    return [t.double() for t in tensors]


def check_parity(q, k, v, grad_out, attn_mask=None, is_causal=False, scale=None, tolerance=None):
    ours = outputs_and_grads(
        lambda q, k, v: fastdl.ops.attention(q, k, v, attn_mask, is_causal, scale), (q, k, v), grad_out)
    expected = outputs_and_grads(
        lambda q, k, v: reference(q, k, v, attn_mask, is_causal, scale), doubles(q, k, v), grad_out.double())
    for name, actual, e, given in zip(("output", "grad_q", "grad_k", "grad_v"), ours, expected,
                                      (grad_out, q, k, v)):
        assert actual.dtype == given.dtype and actual.shape == given.shape, name
        assert_matches(name, actual, e, tolerance)


def assert_matches(name, actual, expected, tolerance=None):
    """actual (any dtype) against the float64 reference: the output, or a gradient."""
    bounds = VS_FLOAT64 if name == "output" else GRADS_VS_FLOAT64
    tolerance = tolerance or bounds[actual.dtype]
    torch.testing.assert_close(actual.double(), expected, **tolerance, msg=lambda m: f"{name}: {m}")


# (B, Hq, Hkv, Nq, Nk, D, Dv, mask kind, mask shape (letters: sizes), causal, scale)
CASES = [
    (2, 3, 3, 17, 17, 32, 32, None, None, False, None),
    (2, 3, 3, 17, 17, 32, 32, None, None, True, None),
    (1, 2, 2, 130, 130, 64, 64, None, None, True, None),  # several tiles and query blocks
    (1, 4, 1, 65, 63, 64, 64, "bool", "QK", False, None),  # multi-query attention
    (2, 4, 2, 63, 130, 80, 80, "add", "B11K", True, None),  # key padding, Nq < Nk causal
    (2, 2, 2, 130, 65, 128, 128, "add", "BHQK", True, None),  # Nq > Nk causal
    (3, 4, 2, 33, 47, 80, 80, "add", "1H11", False, 0.3),  # per-head bias, custom scale
    (2, 4, 4, 1, 70, 64, 64, "bool", "B11K", False, None),  # one query (decoding)
    (1, 4, 2, 5, 1, 32, 32, None, None, False, None),  # one key
    (1, 2, 1, 70, 70, 64, 48, "bool", "QK", True, None),  # Dv != D, causal + mask
    (1, 1, 1, 1, 1, 32, 32, "bool", "K", True, 2.0),
    (2, 2, 1, 66, 129, 5, 3, "add", "1HQ1", False, None),  # D, Dv not multiples of 4
    (1, 3, 3, 65, 65, 128, 20, "bool", "BHQK", True, -0.7),  # negative scale
    (2, 2, 2, 9, 200, 17, 33, "add", "QK", False, 1e-3),
]


def case_id(case):
    b, hq, hkv, nq, nk, d, dv, kind, mask_shape, causal, scale = case
    parts = [f"B{b}H{hq}x{hkv}N{nq}x{nk}D{d}x{dv}"]
    if kind:
        parts.append(f"{kind}{mask_shape}")
    if causal:
        parts.append("causal")
    if scale is not None:
        parts.append(f"scale{scale}")
    return "-".join(parts)


def mask_shape_of(letters, b, hq, nq, nk):
    sizes = dict(B=b, H=hq, Q=nq, K=nk, **{"1": 1})
    return tuple(sizes[c] for c in letters)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_sdpa(device, case, dtype):
    b, hq, hkv, nq, nk, d, dv, kind, letters, causal, scale = case
    q, k, v, grad_out = make_inputs(b, hq, hkv, nq, nk, d, dv, dtype, device)
    mask = make_mask(kind, mask_shape_of(letters, b, hq, nq, nk), dtype, device) if kind else None
    check_parity(q, k, v, grad_out, mask, causal, scale)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[9]], ids=case_id)
def test_half_precision(device, case, dtype):
    b, hq, hkv, nq, nk, d, dv, kind, letters, causal, scale = case
    q, k, v, grad_out = make_inputs(b, hq, hkv, nq, nk, d, dv, dtype, device)
    mask = make_mask(kind, mask_shape_of(letters, b, hq, nq, nk), dtype, device) if kind else None
    check_parity(q, k, v, grad_out, mask, causal, scale, LOW_PRECISION[device.type, dtype])


def test_fully_masked_rows_give_zero(device):
    """A query row with every key masked (boolean or additive -inf): output 0, grad_q 0,
    and no contribution to grad_k / grad_v (SDPA gives the same)."""
    q, k, v, grad_out = make_inputs(2, 2, 1, 6, 70, 16, 8, torch.float32, device)
    bool_mask = torch.ones(2, 1, 6, 70, dtype=torch.bool, device=device)
    bool_mask[0, :, 2] = False
    bool_mask[1, :, 5] = False
    additive = torch.zeros(6, 70, device=device)
    additive[3] = -math.inf
    for mask, rows in ((bool_mask, [(0, 2), (1, 5)]), (additive, [(0, 3), (1, 3)])):
        out, grad_q, grad_k, grad_v = outputs_and_grads(
            lambda q, k, v: fastdl.ops.attention(q, k, v, mask), (q, k, v), grad_out)
        for batch, row in rows:
            assert torch.equal(out[batch, :, row], torch.zeros_like(out[batch, :, row]))
            assert torch.equal(grad_q[batch, :, row], torch.zeros_like(grad_q[batch, :, row]))
        check_parity(q, k, v, grad_out, mask)
        # The other rows still reach k and v.
        assert grad_k.abs().sum() > 0 and grad_v.abs().sum() > 0
    _, logsumexp = OP(q, k, v, bool_mask, False, 0.25, 0.0, 0)
    assert torch.isneginf(logsumexp[0, :, 2]).all() and torch.isfinite(logsumexp[0, :, :2]).all()


def test_logsumexp(device):
    q, k, v, _ = make_inputs(2, 4, 2, 67, 65, 24, 8, torch.float64, device)
    mask = make_mask("add", (2, 1, 67, 65), torch.float64, device)
    scale = 0.4

    def reference_logsumexp():
        scores = scale * q @ k.repeat_interleave(2, dim=1).transpose(-1, -2)
        return torch.logsumexp(scores + with_causal(mask, 67, 65, device), dim=-1)

    _, logsumexp = OP(q, k, v, mask, True, scale, 0.0, 0)
    assert logsumexp.dtype == torch.float64 and logsumexp.shape == (2, 4, 67)
    expected = reference_logsumexp()
    # A second call of each side tells a run-to-run difference in either from a plain
    # mismatch: one CI run on torch 2.13 had 29 of these rows off by up to 1.4e-9, and
    # neither side alone varied in 100,000 calls.
    assert_close(OP(q, k, v, mask, True, scale, 0.0, 0)[1], logsumexp,
                 msg="fastdl's logsumexp changed between two calls")
    assert_close(reference_logsumexp(), expected,
                 msg="torch's reference logsumexp changed between two calls")
    assert_close(logsumexp, expected)
    _, logsumexp32 = OP(q.float(), k.float(), v.float(), mask.float(), True, scale, 0.0, 0)
    assert logsumexp32.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unbatched_heads(device, dtype):
    """(B, N, D) inputs, with a (Nq, Nk) and a (B, Nq, Nk) mask."""
    q, k, v, grad_out = (t[:, 0] for t in make_inputs(3, 1, 1, 19, 70, 32, 12, dtype, device))
    check_parity(q, k, v, grad_out)
    check_parity(q, k, v, grad_out, make_mask("bool", (19, 70), dtype, device), True)
    check_parity(q, k, v, grad_out, make_mask("add", (3, 19, 70), dtype, device))
    assert fastdl.ops.attention(q, k, v).shape == (3, 19, 12)


def test_strided_inputs(device):
    """Heads split from (B, N, H, D) as multi-head attention does (transpose(1, 2)); K and
    V sliced from a longer KV cache; a query whose last dimension is strided; and an
    expanded grad_output (loss = out.sum())."""
    g = torch.Generator().manual_seed(3)
    make = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(device, torch.float32)
    q = make(2, 70, 4, 32).transpose(1, 2)
    cache_k, cache_v = make(2, 2, 200, 32), make(2, 2, 200, 24)
    k, v = cache_k[:, :, :77], cache_v[:, :, :77]
    assert not q.is_contiguous() and not k.is_contiguous()
    grad_out = make(2, 4, 70, 24)
    mask = make_mask("bool", (2, 1, 1, 77), torch.float32, device)
    check_parity(q, k, v, grad_out, mask, True)
    q_columns = make(2, 4, 32, 70).transpose(-1, -2)  # stride 70 along D
    check_parity(q_columns, k, v, grad_out)
    mask_t = make_mask("add", (77, 70), torch.float32, device).t()  # a strided mask
    check_parity(q, k, v, grad_out, mask_t)
    ones = torch.ones(1, device=device).expand(2, 4, 70, 24)
    check_parity(q, k, v, ones, mask, True)


# ---------------------------------------------------------------- dropout


def recover_dropout(b, hq, nq, nk, p, seed, device):
    """The keep pattern (B, Hq, Nq, Nk) of `seed`: with q = k = 0 every weight is 1 / Nk and
    with v = identity, output[i, j] = keep(i, j) / ((1 - p) Nk)."""
    q = torch.zeros(b, hq, nq, 1, dtype=torch.float64, device=device)
    k = torch.zeros(b, 1, nk, 1, dtype=torch.float64, device=device)
    v = torch.eye(nk, dtype=torch.float64, device=device).expand(b, 1, nk, nk)
    scaled = fastdl.ops.attention(q, k, v, dropout_p=p, seed=seed) * ((1 - p) * nk)
    keep = scaled.round()
    assert_close(scaled, keep)  # exactly 0 or 1, nothing else
    assert ((keep == 0) | (keep == 1)).all()
    return keep


def test_dropout_is_deterministic_given_the_seed(device):
    q, k, v, _ = make_inputs(2, 2, 2, 33, 70, 16, 16, torch.float32, device)
    first = fastdl.ops.attention(q, k, v, dropout_p=0.2, seed=123)
    assert torch.equal(first, fastdl.ops.attention(q, k, v, dropout_p=0.2, seed=123))
    assert not torch.equal(first, fastdl.ops.attention(q, k, v, dropout_p=0.2, seed=124))
    assert not torch.equal(first, fastdl.ops.attention(q, k, v))
    # No seed: drawn from torch's default generator.
    torch.manual_seed(7)
    drawn = fastdl.ops.attention(q, k, v, dropout_p=0.2)
    torch.manual_seed(7)
    assert torch.equal(drawn, fastdl.ops.attention(q, k, v, dropout_p=0.2))
    assert not torch.equal(drawn, fastdl.ops.attention(q, k, v, dropout_p=0.2))


def test_dropout_zero_is_no_dropout(device):
    q, k, v, grad_out = make_inputs(1, 2, 1, 20, 70, 16, 8, torch.float32, device)
    plain = outputs_and_grads(lambda q, k, v: fastdl.ops.attention(q, k, v, is_causal=True), (q, k, v), grad_out)
    for seed in (0, 1, 2**62):
        seeded = outputs_and_grads(
            lambda q, k, v: fastdl.ops.attention(q, k, v, is_causal=True, dropout_p=0.0, seed=seed),
            (q, k, v), grad_out)
        for a, e in zip(seeded, plain):
            assert torch.equal(a, e)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_rate(device, p):
    keep = recover_dropout(1, 1, 64, 512, p, seed=2024, device=device)
    # 32768 independent draws: the kept fraction's standard deviation is <= 0.0028.
    assert abs(keep.mean().item() - (1 - p)) < 0.015
    # Neither rows nor columns are correlated with the pattern's position.
    assert abs(keep.mean(dim=-1) - (1 - p)).max() < 0.1
    assert not torch.equal(keep[0, 0, 0], keep[0, 0, 1])


def dropout_reference(q, k, v, keep, p, attn_mask=None, is_causal=False, scale=None):
    q, k, v = (t.double() for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = scale * q @ k.transpose(-1, -2)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool \
            else scores + attn_mask.double()
    if is_causal:
        scores = scores.masked_fill(~causal_mask(q.shape[2], k.shape[2], q.device), -math.inf)
    return (torch.softmax(scores, dim=-1) * keep / (1 - p)) @ v


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b, hq, hkv, nq, nk, d, dv, kind, causal", [
    (2, 2, 1, 70, 67, 16, 24, None, False),
    (1, 4, 2, 33, 130, 64, 64, "bool", True),
    (2, 2, 2, 65, 65, 80, 5, "add", True),
])
def test_dropout_matches_reference_with_the_recovered_pattern(device, dtype, b, hq, hkv, nq, nk, d, dv,
                                                              kind, causal):
    p, seed = 0.3, 99
    keep = recover_dropout(b, hq, nq, nk, p, seed, device)
    q, k, v, grad_out = make_inputs(b, hq, hkv, nq, nk, d, dv, dtype, device)
    mask = make_mask(kind, (b, 1, nq, nk), dtype, device)
    ours = outputs_and_grads(
        lambda q, k, v: fastdl.ops.attention(q, k, v, mask, causal, dropout_p=p, seed=seed),
        (q, k, v), grad_out)
    expected = outputs_and_grads(lambda q, k, v: dropout_reference(q, k, v, keep, p, mask, causal),
                                 doubles(q, k, v), grad_out.double())
    for name, actual, e in zip(("output", "grad_q", "grad_k", "grad_v"), ours, expected):
        assert_matches(name, actual, e)


@requires_cuda
def test_dropout_pattern_is_the_same_on_cpu_and_cuda():
    cpu = recover_dropout(2, 3, 40, 70, 0.25, 5, torch.device("cpu"))
    cuda = recover_dropout(2, 3, 40, 70, 0.25, 5, torch.device("cuda"))
    assert torch.equal(cpu, cuda.cpu())


# ---------------------------------------------------------------- empty problems


@pytest.mark.parametrize("b, hq, hkv, nq, nk", [
    (0, 2, 1, 5, 6), (2, 2, 1, 0, 6), (2, 2, 1, 5, 0), (2, 0, 1, 5, 6), (0, 2, 2, 0, 0),
])
def test_empty(device, b, hq, hkv, nq, nk):
    """Output and gradients are zeros, as SDPA's (for Nk = 0 too: every row has no key,
    SDPA's softmax over no key times no value gives 0, and so does fastdl)."""
    q, k, v, grad_out = make_inputs(b, hq, hkv, nq, nk, 8, 4, torch.float32, device)
    mask = torch.ones(nq, nk, dtype=torch.bool, device=device)
    for attn_mask, causal in ((None, False), (mask, True)):
        out, grad_q, grad_k, grad_v = outputs_and_grads(
            lambda q, k, v: fastdl.ops.attention(q, k, v, attn_mask, causal, dropout_p=0.1, seed=1),
            (q, k, v), grad_out)
        for actual, like in ((out, grad_out), (grad_q, q), (grad_k, k), (grad_v, v)):
            assert actual.shape == like.shape
            assert torch.equal(actual, torch.zeros_like(like))
    if hq > 0:  # SDPA with enable_gqa needs Hq > 0
        check_parity(q, k, v, grad_out)
    _, logsumexp = OP(q, k, v, None, False, 1.0, 0.0, 0)
    assert logsumexp.shape == (b, hq, nq) and torch.isneginf(logsumexp).all()


# ---------------------------------------------------------------- gradcheck, opcheck, compile


@pytest.mark.parametrize("kind, causal, hkv, dropout_p", [
    (None, False, 2, 0.0), ("add", True, 1, 0.0), ("bool", False, 1, 0.0), ("add", True, 2, 0.3),
    (None, False, 1, 0.3),
])
def test_gradcheck(device, kind, causal, hkv, dropout_p):
    q, k, v, _ = make_inputs(2, 2, hkv, 5, 7, 3, 4, torch.float64, device)
    mask = make_mask(kind, (2, 1, 5, 7), torch.float64, device)
    if kind == "add":
        mask = mask.clamp(min=-5)  # -inf entries are tested elsewhere; keep a mixed-sign bias
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(
        lambda q, k, v: fastdl.ops.attention(q, k, v, mask, causal, 0.7, dropout_p, seed=11), inputs)


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_opcheck(device, dropout_p):
    q, k, v, grad_out = make_inputs(2, 4, 2, 9, 70, 16, 8, torch.float32, device)
    for mask, causal in ((None, True), (make_mask("bool", (2, 1, 9, 70), torch.float32, device), False),
                         (make_mask("add", (9, 70), torch.float32, device), True)):
        args = (q, k, v, mask, causal, 0.25, dropout_p, 5)
        torch.library.opcheck(OP, args)
        torch.library.opcheck(OP, tuple(t.clone().requires_grad_() for t in (q, k, v)) + args[3:])
        out, logsumexp = OP(*args)
        torch.library.opcheck(BACKWARD_OP, (grad_out, q, k, v, out, logsumexp) + args[3:])


def test_fake_kernel_on_meta():
    q, k, v = (torch.empty(*s, device="meta") for s in ((2, 4, 9, 16), (2, 2, 70, 16), (2, 2, 70, 8)))
    out = fastdl.ops.attention(q, k, v, torch.empty(9, 70, dtype=torch.bool, device="meta"), True)
    assert out.shape == (2, 4, 9, 8) and out.device.type == "meta"
    assert fastdl.ops.attention(q[:, 0], k[:, 0], v[:, 0]).shape == (2, 9, 8)


def test_under_torch_compile(device):
    q, k, v, grad_out = make_inputs(2, 4, 2, 33, 70, 16, 8, torch.float32, device)
    mask = make_mask("add", (2, 1, 1, 70), torch.float32, device)

    def block(q, k, v, mask):
        return fastdl.ops.attention(torch.tanh(q), k * 2, v, mask, is_causal=True, scale=0.3) + 1

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    ours = outputs_and_grads(lambda q, k, v: compiled(q, k, v, mask), (q, k, v), grad_out)
    eager = outputs_and_grads(lambda q, k, v: block(q, k, v, mask), (q, k, v), grad_out)
    for a, e in zip(ours, eager):
        assert_close(a, e)


def test_under_inductor(device):
    q, k, v, grad_out = make_inputs(1, 2, 1, 20, 30, 8, 8, torch.float32, device)
    compiled = torch.compile(lambda q, k, v: fastdl.ops.attention(q * 0.5, k, v).sum(-1), fullgraph=True)
    eager = fastdl.ops.attention(q * 0.5, k, v).sum(-1)
    assert_close(compiled(q, k, v), eager)


# ---------------------------------------------------------------- threads and ISA paths


def _run_everything(q, k, v, grad_out, mask):
    results = []
    for dropout_p in (0.0, 0.2):
        results += outputs_and_grads(
            lambda q, k, v: fastdl.ops.attention(q, k, v, mask, True, dropout_p=dropout_p, seed=3),
            (q, k, v), grad_out)
    return results


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_results_do_not_depend_on_thread_count(isa, dtype):
    q, k, v, grad_out = make_inputs(3, 4, 2, 130, 70, 32, 16, dtype, "cpu")
    mask = make_mask("bool", (3, 1, 1, 70), dtype, "cpu")
    previous_threads, previous_isa = torch.get_num_threads(), fastdl._C.cpu_isa()
    fastdl._C.set_cpu_isa(isa)
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(_run_everything(q, k, v, grad_out, mask))
    finally:
        torch.set_num_threads(previous_threads)
        fastdl._C.set_cpu_isa(previous_isa)
    for other in results[1:]:
        for a, e in zip(other, results[0]):
            assert torch.equal(a, e)


def test_isa_paths_agree():
    q, k, v, grad_out = make_inputs(2, 4, 2, 100, 130, 80, 24, torch.float32, "cpu")
    mask = make_mask("add", (2, 4, 100, 130), torch.float32, "cpu")
    previous = fastdl._C.cpu_isa()
    try:
        results = {}
        for isa in CPU_ISAS:
            fastdl._C.set_cpu_isa(isa)
            results[isa] = _run_everything(q, k, v, grad_out, mask)
    finally:
        fastdl._C.set_cpu_isa(previous)
    for isa in CPU_ISAS[1:]:
        for a, e in zip(results[isa], results["scalar"]):
            assert_close(a, e, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- bad input


def _valid(dtype=torch.float32):
    """q (2, 4, 5, 8), k (2, 2, 6, 8), v (2, 2, 6, 3)."""
    return torch.randn(2, 4, 5, 8, dtype=dtype), torch.randn(2, 2, 6, 8, dtype=dtype), \
        torch.randn(2, 2, 6, 3, dtype=dtype)


@pytest.mark.parametrize("mutate, kwargs, error, message", [
    (lambda q, k, v: (q[0, 0], k, v), {}, ValueError,
     r"fastdl.attention: query must have shape \(B, H, N, D\) or \(B, N, D\), got \(5, 8\)"),
    (lambda q, k, v: (q, k[None], v), {}, ValueError,
     r"fastdl.attention: key must have shape \(B, H, N, D\) or \(B, N, D\), got \(1, 2, 2, 6, 8\)"),
    (lambda q, k, v: (q, k, v[0, 0, 0]), {}, ValueError,
     r"fastdl.attention: value must have shape \(B, H, N, D\) or \(B, N, D\), got \(3,\)"),
    (lambda q, k, v: (q.long(), k.long(), v.long()), {}, TypeError,
     r"fastdl.attention: query must be torch.float32, torch.float64, torch.float16 or "
     r"torch.bfloat16, got torch.int64"),
    (lambda q, k, v: (q, k.double(), v), {}, TypeError,
     r"fastdl.attention: query and key must have the same dtype, got torch.float32 and torch.float64"),
    (lambda q, k, v: (q, k, v.bfloat16()), {}, TypeError,
     r"fastdl.attention: query and value must have the same dtype, got torch.float32 and torch.bfloat16"),
    (lambda q, k, v: (q, k[:1], v), {}, ValueError,
     r"fastdl.attention: query, key and value must have the same batch size, got \(2, 4, 5, 8\), "
     r"\(1, 2, 6, 8\) and \(2, 2, 6, 3\)"),
    (lambda q, k, v: (q, k, v[:1]), {}, ValueError, r"must have the same batch size"),
    (lambda q, k, v: (q, k[..., :7], v), {}, ValueError,
     r"fastdl.attention: key must have query's head dimension D = 8, got \(2, 2, 6, 7\)"),
    (lambda q, k, v: (q, k, v[:, :1]), {}, ValueError,
     r"fastdl.attention: value must have key's heads and length \(B, 2, 6, Dv\), got \(2, 1, 6, 3\)"),
    (lambda q, k, v: (q, k, v[:, :, :5]), {}, ValueError,
     r"value must have key's heads and length \(B, 2, 6, Dv\), got \(2, 2, 5, 3\)"),
    (lambda q, k, v: (q[:, :3], k, v), {}, ValueError,
     r"fastdl.attention: query's heads must be a multiple of key's heads \(grouped-query attention\), "
     r"got 3 and 2"),
    (lambda q, k, v: (q, k[:, :0], v[:, :0]), {}, ValueError,
     r"query's heads must be a multiple of key's heads \(grouped-query attention\), got 4 and 0"),
    (lambda q, k, v: (q[..., :0], k[..., :0], v), {}, ValueError,
     r"fastdl.attention: head dimensions must be at least 1, got D = 0 and Dv = 3"),
    (lambda q, k, v: (q[..., :0], k[..., :0], v), dict(scale=1.0), ValueError,
     r"fastdl.attention: head dimensions must be at least 1, got D = 0 and Dv = 3"),
    (lambda q, k, v: (q, k, v[..., :0]), {}, ValueError,
     r"head dimensions must be at least 1, got D = 8 and Dv = 0"),
    (lambda q, k, v: (q, k, v), dict(scale=math.nan), ValueError,
     r"fastdl.attention: scale must be finite, got nan"),
    (lambda q, k, v: (q, k, v), dict(scale=-math.inf), ValueError, r"scale must be finite, got -inf"),
    (lambda q, k, v: (q, k, v), dict(dropout_p=1.0), ValueError,
     r"fastdl.attention: dropout_p must be in \[0, 1\), got 1"),
    (lambda q, k, v: (q, k, v), dict(dropout_p=-0.1), ValueError, r"dropout_p must be in \[0, 1\), got -0.1"),
    (lambda q, k, v: (q, k, v), dict(dropout_p=math.nan, seed=0), ValueError,
     r"dropout_p must be in \[0, 1\), got nan"),
    (lambda q, k, v: (q, k, v), dict(attn_mask=torch.ones(5, 6, dtype=torch.int64)), TypeError,
     r"fastdl.attention: attn_mask must be torch.bool or query's dtype torch.float32, got torch.int64"),
    (lambda q, k, v: (q, k, v), dict(attn_mask=torch.zeros(5, 6, dtype=torch.float64)), TypeError,
     r"attn_mask must be torch.bool or query's dtype torch.float32, got torch.float64"),
    (lambda q, k, v: (q, k, v), dict(attn_mask=torch.ones(5, 7, dtype=torch.bool)), ValueError,
     r"fastdl.attention: attn_mask must broadcast to \(B, Hq, Nq, Nk\) = \(2, 4, 5, 6\), got \(5, 7\)"),
    (lambda q, k, v: (q, k, v), dict(attn_mask=torch.ones(2, 2, 5, 6, dtype=torch.bool)), ValueError,
     r"attn_mask must broadcast to \(B, Hq, Nq, Nk\) = \(2, 4, 5, 6\), got \(2, 2, 5, 6\)"),
    (lambda q, k, v: (q, k, v), dict(attn_mask=torch.ones(1, 2, 4, 5, 6, dtype=torch.bool)), ValueError,
     r"attn_mask must broadcast to \(B, Hq, Nq, Nk\) = \(2, 4, 5, 6\), got \(1, 2, 4, 5, 6\)"),
    (lambda q, k, v: (q, k, v), dict(attn_mask=torch.zeros(5, 6, requires_grad=True)), NotImplementedError,
     r"fastdl.attention: attn_mask must not require grad"),
    (lambda q, k, v: (q, k.to("meta"), v), {}, RuntimeError,
     r"fastdl.attention: query and key must be on the same device, got cpu and meta"),
    (lambda q, k, v: (q, k, v), dict(attn_mask=torch.ones(5, 6, dtype=torch.bool, device="meta")),
     RuntimeError, r"fastdl.attention: query and attn_mask must be on the same device, got cpu and meta"),
])
def test_bad_input(mutate, kwargs, error, message):
    q, k, v = mutate(*_valid())
    with pytest.raises(error, match=message):
        fastdl.ops.attention(q, k, v, **kwargs)


@pytest.mark.parametrize("which, index", [("query", 0), ("key", 1), ("value", 2)])
def test_op_requires_four_dimensions(which, index):
    """The Python API adds the head dimension of 3-D inputs; the op itself takes 4-D only."""
    args = list(_valid())
    args[index] = args[index][:, 0]
    pattern = {"query": r"\(B, Hq, Nq, D\)", "key": r"\(B, Hkv, Nk, D\)", "value": r"\(B, Hkv, Nk, Dv\)"}
    with pytest.raises(ValueError, match=rf"fastdl.attention: {which} must have shape {pattern[which]}, "
                       rf"got \({', '.join(map(str, args[index].shape))}\)"):
        OP(*args, None, False, 1.0, 0.0, 0)


def _backward_args():
    q, k, v = _valid()
    out, logsumexp = OP(q, k, v, None, False, 0.5, 0.0, 0)
    return dict(grad_output=torch.randn_like(out), q=q, k=k, v=v, output=out, logsumexp=logsumexp)


@pytest.mark.parametrize("name, replacement, error, message", [
    ("grad_output", lambda t: t[:, :, :4], ValueError,
     r"fastdl.attention_backward: grad_output must have shape \(B, Hq, Nq, Dv\) of the forward output, "
     r"got \(2, 4, 4, 3\)"),
    ("grad_output", lambda t: t[0], ValueError,
     r"grad_output must have shape \(B, Hq, Nq, Dv\) of the forward output, got \(4, 5, 3\)"),
    ("output", lambda t: torch.cat([t, t], dim=-1), ValueError,
     r"fastdl.attention_backward: output must have shape \(B, Hq, Nq, Dv\) of the forward output, "
     r"got \(2, 4, 5, 6\)"),
    ("grad_output", lambda t: t.double(), TypeError,
     r"fastdl.attention_backward: query and grad_output must have the same dtype, got torch.float32 "
     r"and torch.float64"),
    ("output", lambda t: t.half(), TypeError, r"query and output must have the same dtype"),
    ("logsumexp", lambda t: t[..., None], ValueError,
     r"fastdl.attention_backward: logsumexp must have shape \(B, Hq, Nq\) of the forward, got \(2, 4, 5, 1\)"),
    ("logsumexp", lambda t: t[:, :2], ValueError,
     r"logsumexp must have shape \(B, Hq, Nq\) of the forward, got \(2, 2, 5\)"),
    ("logsumexp", lambda t: t.double(), TypeError,
     r"fastdl.attention_backward: logsumexp must be torch.float32 for query of dtype torch.float32, "
     r"got torch.float64"),
    ("k", lambda t: t[..., :7], ValueError,
     r"fastdl.attention_backward: key must have query's head dimension D = 8, got \(2, 2, 6, 7\)"),
    ("q", lambda t: t.long(), TypeError, r"fastdl.attention_backward: query must be torch.float32"),
])
def test_backward_op_bad_input(name, replacement, error, message):
    args = _backward_args()
    args[name] = replacement(args[name])
    with pytest.raises(error, match=message):
        BACKWARD_OP(*args.values(), None, False, 0.5, 0.0, 0)


def test_backward_op_checks_options_and_mask():
    args = list(_backward_args().values())
    with pytest.raises(ValueError, match=r"fastdl.attention_backward: dropout_p must be in \[0, 1\), got 1.5"):
        BACKWARD_OP(*args, None, False, 0.5, 1.5, 0)
    with pytest.raises(ValueError, match=r"fastdl.attention_backward: scale must be finite, got inf"):
        BACKWARD_OP(*args, None, False, math.inf, 0.0, 0)
    with pytest.raises(ValueError, match=r"fastdl.attention_backward: attn_mask must broadcast to "
                       r"\(B, Hq, Nq, Nk\) = \(2, 4, 5, 6\), got \(3, 1, 1\)"):
        BACKWARD_OP(*args, torch.ones(3, 1, 1, dtype=torch.bool), False, 0.5, 0.0, 0)
    with pytest.raises(TypeError, match=r"fastdl.attention_backward: logsumexp must be torch.float64 "
                       r"for query of dtype torch.float64, got torch.float32"):
        q, k, v = _valid(torch.float64)
        out, _ = OP(q, k, v, None, False, 0.5, 0.0, 0)
        BACKWARD_OP(out, q, k, v, out, torch.zeros(2, 4, 5), None, False, 0.5, 0.0, 0)


@pytest.mark.parametrize("nq", [1, 8])  # the decode path and the tiled path
def test_nan_scores_propagate_as_in_sdpa(device, nq):
    """A NaN score (here from a NaN key) or a +inf mask entry makes its row NaN, as in
    SDPA; it is not dropped like a masked key."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 1, n, 16, generator=g, dtype=torch.float64).to(device)
               for n in (nq, 5, 5))
    k[0, 0, 2, 0] = float("nan")
    assert fastdl.ops.attention(q, k, v).isnan().all()
    mask = torch.zeros(nq, 5, dtype=torch.float64, device=device)
    mask[0, 1] = float("inf")
    out = fastdl.ops.attention(q, torch.randn_like(k), v, attn_mask=mask)
    expected = reference(q, torch.zeros_like(k), v, attn_mask=mask)
    assert torch.equal(out.isnan(), expected.isnan()) and out[0, 0, 0].isnan().all()
