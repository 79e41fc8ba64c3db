"""Every CUDA kernel once, on small odd shapes, forward and backward, in each dtype:
a short program for compute-sanitizer (see .ci/gpu)."""

import torch

import fastdl
from fastdl.bench.inputs import detection_boxes

device = torch.device("cuda")
for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
    for n in (1, 63, 64, 65, 1000, 5000):
        boxes, scores, classes = detection_boxes(n, seed=n, device=device, num_classes=7)
        boxes, scores = boxes.to(dtype), scores.to(dtype)
        fastdl.ops.nms(boxes, scores, 0.5)
        fastdl.ops.batched_nms(boxes, scores, classes, 0.5)
    for channels_last in (False, True):
        for (c, m, h, w, k, s, p, d) in [(5, 1, 13, 11, 3, 1, 1, 1), (16, 2, 9, 10, 7, 2, 3, 1),
                                         (3, 1, 6, 7, 4, 3, 0, 2), (8, 1, 1, 1, 3, 1, 1, 1),
                                         # shared-memory tiles, gradients in several chunks
                                         (37, 1, 24, 45, 5, 1, 2, 1), (3, 1, 64, 80, 3, 1, 1, 1),
                                         (4, 1, 33, 35, 9, 1, 6, 2)]:
            x = torch.randn(2, c, h, w, device=device, dtype=dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x.requires_grad_()
            weight = torch.randn(c * m, 1, k, k, device=device, dtype=dtype, requires_grad=True)
            bias = torch.randn(c * m, device=device, dtype=dtype, requires_grad=True)
            fastdl.ops.depthwise_conv2d(x, weight, bias, s, p, d).sum().backward()
    for shape, memory_format in [((3, 5, 7, 9), torch.channels_last), ((3, 5, 7, 9), None),
                                 ((6, 37), None), ((2, 3, 300), None), ((1, 70, 1, 1), None)]:
        for activation in ("relu", "silu"):
            for training in (True, False):
                x = torch.randn(shape, device=device, dtype=dtype)
                if memory_format is not None:
                    x = x.contiguous(memory_format=memory_format)
                x.requires_grad_()
                residual = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
                layer = fastdl.nn.BatchNorm1d if len(shape) < 4 else fastdl.nn.BatchNorm2d
                bn = layer(shape[1], activation=activation).to(device).train(training)
                bn(x, residual).sum().backward()
    for batch, hidden in [(1, 1), (3, 33), (8, 256)]:
        cell = fastdl.nn.LSTMCell(7, hidden).to(device=device, dtype=dtype)
        x = torch.randn(batch, 7, device=device, dtype=dtype, requires_grad=True)
        sum(cell(x)).sum().backward()
    lstm = fastdl.nn.LSTM(5, 9, num_layers=2, bidirectional=True).to(device=device, dtype=dtype)
    out, (h, c) = lstm(torch.randn(6, 2, 5, device=device, dtype=dtype, requires_grad=True))
    (out.sum() + h.sum() + c.sum()).backward()
    lstm = fastdl.nn.LSTM(5, 9, num_layers=2, bidirectional=True, proj_size=4).to(device=device, dtype=dtype)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.randn(6, 3, 5, device=device, dtype=dtype, requires_grad=True), [6, 2, 4],
        enforce_sorted=False)
    out, (h, c) = lstm(packed)
    (out.data.sum() + h.sum() + c.sum()).backward()
    gru = fastdl.nn.GRU(5, 9, num_layers=2, bidirectional=True).to(device=device, dtype=dtype)
    out, h = gru(torch.randn(6, 2, 5, device=device, dtype=dtype, requires_grad=True))
    (out.sum() + h.sum()).backward()
    out, h = gru(torch.nn.utils.rnn.pack_padded_sequence(
        torch.randn(6, 3, 5, device=device, dtype=dtype, requires_grad=True), [6, 2, 4],
        enforce_sorted=False))
    (out.data.sum() + h.sum()).backward()
    cell = fastdl.nn.GRUCell(7, 33).to(device=device, dtype=dtype)
    cell(torch.randn(3, 7, device=device, dtype=dtype, requires_grad=True)).sum().backward()
    for channels_last in (False, True):
        for (n, c, h, w, o, k, s, p, d, g) in [(2, 70, 9, 7, 6, 3, 1, 1, 1, 1),
                                               (1, 130, 5, 5, 66, 5, 2, 2, 1, 2),
                                               (3, 1, 4, 4, 2, 1, 1, 0, 1, 1),
                                               (1, 64, 3, 3, 65, 3, 1, 3, 2, 1)]:
            x = torch.randn(n, c, h, w, device=device, dtype=dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x.requires_grad_()
            weight = torch.randn(o, c // g, k, k, device=device, dtype=dtype, requires_grad=True)
            out = fastdl.ops.xnor_conv2d(x, weight, None, s, p, d, g)
            expected = torch.nn.functional.conv2d(torch.where(x >= 0, 1.0, -1.0).double(),
                                                  torch.where(weight >= 0, 1.0, -1.0).double(),
                                                  None, s, p, d, g)
            assert torch.equal(out.double(), expected), "xnor_conv2d differs from F.conv2d of the signs"
            out.sum().backward()
    # attention: tiled forward/backward (tails, D 80 padding, GQA, masks, causal,
    # dropout) and the split-KV decode path (1 query row vs a strided cache view);
    # checked against the CPU kernels, which the tests check against SDPA.
    for (b, hq, hkv, nq, nk, d, dv, causal, mask, p) in [
            (2, 4, 2, 70, 130, 64, 64, False, None, 0.0), (1, 2, 2, 65, 65, 80, 80, True, None, 0.0),
            (2, 2, 1, 5, 200, 32, 48, False, "bool", 0.0), (1, 3, 3, 129, 97, 128, 128, True, "add", 0.2),
            (3, 8, 2, 1, 1000, 128, 128, False, None, 0.0), (1, 1, 1, 1, 1, 256, 256, False, None, 0.0)]:
        cache = torch.randn(2, b, hkv, nk + 16, max(d, dv), device=device, dtype=dtype)
        k, v = cache[0, ..., :nk, :d], cache[1, ..., :nk, :dv]
        q = torch.randn(b, hq, nq, d, device=device, dtype=dtype)
        attn_mask = {None: None, "bool": torch.rand(b, 1, nq, nk, device=device) > 0.3,
                     "add": torch.randn(nq, nk, device=device, dtype=dtype)}[mask]
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        out = fastdl.ops.attention(q, k, v, attn_mask, is_causal=causal, dropout_p=p, seed=7)
        grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
        cpu = [t.detach().cpu().float().requires_grad_() for t in (q, k, v)]
        cpu_out = fastdl.ops.attention(*cpu, None if attn_mask is None else attn_mask.cpu().float()
                                       if attn_mask.dtype != torch.bool else attn_mask.cpu(),
                                       is_causal=causal, dropout_p=p, seed=7)
        cpu_grads = torch.autograd.grad(cpu_out, cpu, torch.ones_like(cpu_out))
        tol = 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
        for name, a, e in zip(("output", "grad_q", "grad_k", "grad_v"), (out, *grads), (cpu_out, *cpu_grads)):
            assert torch.allclose(a.float().cpu(), e, rtol=tol, atol=tol), \
                f"attention {name} differs from the CPU kernel ({b, hq, hkv, nq, nk, d, dv, causal, mask, p}, {dtype})"
    # dilated convolution: forward, grad_input (stride 1 and 2), grad_weight (split-K),
    # grouped, per-side and causal padding; checked against F.conv2d / F.conv1d.
    for (n, c, o, h, w, k, s, p, d, g) in [(2, 6, 8, 13, 17, 3, 1, 2, 2, 1), (1, 8, 12, 9, 70, 3, 2, 3, 3, 2),
                                           (2, 70, 66, 11, 11, 2, 1, 1, 5, 1), (1, 16, 16, 33, 33, 3, 1, 6, 6, 4)]:
        x = torch.randn(n, c, h, w, device=device, dtype=dtype, requires_grad=True)
        weight = torch.randn(o, c // g, k, k, device=device, dtype=dtype, requires_grad=True)
        out = fastdl.ops.dilated_conv2d(x, weight, None, s, p, d, g)
        grads = torch.autograd.grad(out, (x, weight), torch.ones_like(out))
        xr, wr = (t.detach().double().requires_grad_() for t in (x, weight))
        ref = torch.nn.functional.conv2d(xr, wr, None, s, p, d, g)
        ref_grads = torch.autograd.grad(ref, (xr, wr), torch.ones_like(ref))
        tol = 5e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-3
        for name, a, e in zip(("output", "grad_input", "grad_weight"), (out, *grads), (ref, *ref_grads)):
            assert torch.allclose(a.double(), e, rtol=tol, atol=tol * max(1.0, e.abs().max().item())), \
                f"dilated_conv2d {name} differs from F.conv2d ({n, c, o, h, w, k, s, p, d, g}, {dtype})"
    x = torch.randn(2, 16, 300, device=device, dtype=dtype, requires_grad=True)
    weight = torch.randn(16, 16, 2, device=device, dtype=dtype, requires_grad=True)
    fastdl.ops.dilated_conv1d(x, weight, dilation=64, causal=True).sum().backward()
torch.cuda.synchronize()
print("gpu smoke: every kernel ran")
