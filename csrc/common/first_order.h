// Backward ops without a derivative of their own (the recurrent, attention and batch norm
// ones; the convolutions' backward ops have one, fastdl/ops/_utils.py:
// register_conv_derivatives).
//
// register_first_order_only puts PyTorch's not-implemented autograd kernel at a backward
// op's Autograd key. It runs the op below autograd and, where a gradient could flow into
// the op's inputs (create_graph=True, or any torch.func.grad, which always builds a
// graph), gives the outputs a node that raises "derivative for fastdl::<op> is not
// implemented" if a gradient ever reaches it.
//
// Why: with no kernel there, PyTorch's default warned and a second derivative came back
// as zeros (a depthwise gradient penalty silently lost its term); and under
// create_graph=True the at:: out= calls inside GRU's backward refused their inputs,
// which require grad, so torch.func.grad of a GRU failed.
#pragma once

#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

namespace fastdl {

// In a TORCH_LIBRARY_IMPL(fastdl, Autograd, m) block, for the op `name`.
inline void register_first_order_only(torch::Library& m, const char* name) {
  m.impl(name, torch::autograd::autogradNotImplementedFallback());
}

}  // namespace fastdl
