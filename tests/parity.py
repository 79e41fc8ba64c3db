"""Helpers to compare fastdl ops with their reference op."""

import torch

from conftest import TOLERANCES


def assert_close(actual: torch.Tensor, expected: torch.Tensor, **overrides) -> None:
    """torch.testing.assert_close with the dtype's tolerance from conftest.TOLERANCES."""
    tolerance = dict(TOLERANCES.get(expected.dtype, {}), **overrides)
    torch.testing.assert_close(actual, expected, **tolerance)


def assert_same_layout(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """actual is laid out as expected is: contiguous, channels_last, both (a tensor whose
    strides satisfy both) or neither."""
    for fmt in (torch.contiguous_format, torch.channels_last):
        assert actual.is_contiguous(memory_format=fmt) == expected.is_contiguous(memory_format=fmt), fmt


def outputs_and_grads(fn, tensors, grad_out) -> list[torch.Tensor]:
    """[fn(*tensors), then the gradient of sum(fn(*tensors) * grad_out) for each tensor],
    on detached copies of the tensors (leaves of their own)."""
    tensors = [t.detach().requires_grad_() for t in tensors]
    out = fn(*tensors)
    return [out, *torch.autograd.grad(out, tensors, grad_out)]


def assert_same_indices(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Integer results (indices) must match exactly, in order."""
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.device == expected.device, (actual.device, expected.device)
    assert torch.equal(actual.cpu(), expected.cpu()), (
        f"\nfastdl:    {actual.tolist()[:50]}\nreference: {expected.tolist()[:50]}"
    )


def assert_compiled_grads_match(ours, reference, inputs, states) -> None:
    """The gradients of the ``states`` (and inputs) through ``torch.compile(ours)`` (inductor,
    whose generated code checks each kernel's result against its fake kernel's strides)
    match ``reference``'s, ``ours`` loaded with ``reference``'s weights. ``inputs``: the
    call's arguments; ``states``: the tensors among them to differentiate."""
    ours.load_state_dict(reference.state_dict())
    results = []
    for layer in (torch.compile(ours), reference):
        out = layer(*inputs)
        outputs = out if isinstance(out, tuple) else (out,)
        loss = sum(o.sum() for o in outputs if isinstance(o, torch.Tensor))
        results.append(torch.autograd.grad(loss, states))
    for actual, expected in zip(*results):
        assert_close(actual, expected)

