"""The shape checks of the recurrent layers and cells, with torch's messages: a state
of the wrong shape must fail as it does with nn.LSTM and its kin, not be broadcast or
partly ignored."""

from torch import Tensor, nn


def check_cell(input: Tensor, states: tuple[Tensor, ...], input_size: int,
               hidden_size: int) -> None:
    """A cell's batched input (B, I) and states, each (B, H), as torch's cells check
    them (``hidden0``, ``hidden1``: h then c)."""
    if input.shape[1] != input_size:
        raise RuntimeError(f"input has inconsistent input_size: got {input.shape[1]} "
                           f"expected {input_size}")
    for index, state in enumerate(states):
        if state.dim() > 2:
            raise RuntimeError(f"hidden{index} must be 2-D (batch, hidden_size) for a batched "
                               f"input, got {state.dim()}-D")
        if state.dim() != 2 or state.shape[0] != input.shape[0]:
            raise RuntimeError(f"Input batch size {input.shape[0]} doesn't match hidden{index} "
                               f"batch size {state.shape[0] if state.dim() else 1}")
        if state.shape[1] != hidden_size:
            raise RuntimeError(f"hidden{index} has inconsistent hidden_size: got "
                               f"{state.shape[1]}, expected {hidden_size}")


def check_layer(layer: nn.RNNBase, input: Tensor, hx, unbatched: bool) -> None:
    """A layer's unpacked input, (T, B, I) or (B, T, I) or unbatched (T, I), and its
    initial state (a tensor, or a tuple for the LSTM; None: zeros), by torch's own
    checks (``check_input``, ``check_forward_args``), so with its messages."""
    states = () if hx is None else (hx,) if isinstance(hx, Tensor) else tuple(hx)
    dims = 2 if unbatched else 3
    if any(state.dim() != dims for state in states):
        raise RuntimeError(f"For {'unbatched 2-D' if unbatched else 'batched 3-D'} input, hx "
                           f"should also be {dims}-D but got "
                           f"{', '.join(f'{state.dim()}-D' for state in states)} tensor(s)")
    if unbatched:  # as torch's layers see it: a batch of one
        input = input.unsqueeze(0 if layer.batch_first else 1)
        states = tuple(state.unsqueeze(1) for state in states)
    if not states:
        layer.check_input(input, None)
    else:
        layer.check_forward_args(input, states if len(states) == 2 else states[0], None)
