"""PackedSequence input for the recurrent layers: the packed rows padded to (T, B, ...)
in the packed (sorted) order, with the batch sizes the layer ops take, and back."""

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence


def padded(packed: PackedSequence) -> tuple[Tensor, Tensor]:
    """(data padded to (T, B, F) with zeros, the positions of the packed rows among its
    T * B rows, on data's device)."""
    data, batch_sizes = packed.data, packed.batch_sizes
    steps, batch = batch_sizes.shape[0], int(batch_sizes[0])
    # Packed rows are time-major, each step's rows first: the order in which a
    # (T, B) mask of "row < batch_sizes[t]" lists its True entries. The positions are
    # found on the CPU, where batch_sizes lives: a boolean mask on a GPU would make
    # every call wait for the device to count its True entries.
    mask = torch.arange(batch)[None, :] < batch_sizes[:, None]
    positions = mask.flatten().nonzero().squeeze(1).to(data.device, non_blocking=True)
    out = data.new_zeros(steps * batch, data.shape[1]).index_copy(0, positions, data)
    return out.view(steps, batch, data.shape[1]), positions


def sorted_state(packed: PackedSequence, state: Tensor) -> Tensor:
    """An initial state (layers, B, H) in the caller's batch order, in the packed order."""
    indices = packed.sorted_indices
    return state if indices is None else state.index_select(1, indices)


def caller_order(packed: PackedSequence, state: Tensor) -> Tensor:
    """A final state (layers, B, H) in the packed order, back in the caller's order."""
    indices = packed.unsorted_indices
    return state if indices is None else state.index_select(1, indices)


def repacked(packed: PackedSequence, output: Tensor, positions: Tensor) -> PackedSequence:
    """The layer's padded output (T, B, F) as a PackedSequence like the input
    (``positions`` from ``padded``)."""
    rows = output.reshape(-1, output.shape[-1]).index_select(0, positions)
    return PackedSequence(rows, packed.batch_sizes, packed.sorted_indices,
                          packed.unsorted_indices)
