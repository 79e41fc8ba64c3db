"""Helpers shared by every op wrapper in fastdl.ops."""

import functools

import torch
import torch.autograd.forward_ad as forward_ad
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
from torch._prims_common import suggest_memory_format

from .. import _C

SUPPORTED_DEVICE_TYPES = ("cpu", "cuda")


def conv_memory_format(input: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """The memory format of a convolution's output and input gradient, as PyTorch's own
    convolution picks it (csrc/common/conv_layout.h): channels_last when the input or the
    weight is channels_last, else contiguous."""
    if torch.channels_last in (suggest_memory_format(input), suggest_memory_format(weight)):
        return torch.channels_last
    return torch.contiguous_format


def check_device(op: str, **tensors: torch.Tensor) -> None:
    """Fail clearly before dispatch when the tensors' devices can't be served.

    The dispatcher would otherwise pick a kernel by the "highest" device among the
    arguments and fail with a message that names neither the op's arguments nor the
    cause (for example a build without CUDA kernels).
    """
    (first_name, first), *rest = tensors.items()
    for name, tensor in rest:
        if tensor.device != first.device:
            raise RuntimeError(
                f"fastdl.{op}: {first_name} and {name} must be on the same device, "
                f"got {first.device} and {tensor.device}"
            )
    device_type = first.device.type
    if device_type not in SUPPORTED_DEVICE_TYPES and device_type != "meta":
        raise RuntimeError(
            f"fastdl.{op}: {first_name} must be on one of {', '.join(SUPPORTED_DEVICE_TYPES)}, "
            f"got {first.device}"
        )
    if device_type == "cuda" and not _C.cuda_compiled:
        raise RuntimeError(
            f"fastdl.{op}: {first_name} is on {first.device}, but this fastdl build has no CUDA "
            "kernels (built with FASTDL_CUDA=0, or without nvcc / a CUDA torch); rebuild with "
            "FASTDL_CUDA=1"
        )


def call_op(op, *args):
    """``op(*args)`` for an op with an autograd formula, below the autograd layer when no
    gradient can flow from this call: under ``torch.no_grad()``, or when no tensor argument
    requires a gradient.

    Why: ``torch.library.register_autograd`` installs a Python kernel at the op's Autograd
    key. The dispatcher runs it on every call, even under ``torch.no_grad()``, and only
    then finds nothing to record. Measured on an Intel Xeon, a depthwise call on a
    1x32x8x8 input under ``no_grad`` took 13.8 us through that kernel and 9.9 us below
    it. At batch 1 such calls add up (MobileNetV2 makes 52 of them).

    While Dynamo traces (``torch.compile``), the call stays plain, so the graph holds the
    op itself, unless a forward-mode level is open (then it runs outside the graph, as
    below). Under a ``torch.func`` transform (``grad``, ``vjp``, ``jacrev``, ``vmap``,
    ``jvp``) or inside ``torch.autograd.forward_ad.dual_level()`` the call goes through
    ``_FormulaFunction``, the same formula in the form those transforms accept (below
    autograd, a dual input's tangent would be dropped without a word).
    """
    if torch.compiler.is_compiling():
        if op in _FORMULAS and forward_ad._current_level >= 0:
            # Forward mode (torch.func.jvp, jacfwd): traced, the op's own autograd kernel
            # has no forward rule and its tangent came out as zeros; run the call outside
            # the graph, through _FormulaFunction.
            return _call_op_eagerly(op, *args)
        return op(*args)
    if op in _FORMULAS and (torch._C._functorch.peek_interpreter_stack() is not None
                            or forward_ad._current_level >= 0):
        return _FormulaFunction.apply(op, *map(_Constant.wrap, args))
    if needs_grad(*args):
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


_call_op_eagerly = torch.compiler.disable(call_op, recursive=True)


# Where the autocast kernels are registered (kept alive with the module).
_AUTOCAST_LIB = torch.library.Library("fastdl", "FRAGMENT")


def _floating_on(args, device_type: str):
    """The floating tensors among ``args`` (through lists and tuples) on ``device_type``."""
    for value in args:
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and value.device.type == device_type:
                yield value
        elif isinstance(value, (list, tuple)):
            yield from _floating_on(value, device_type)


def _autocast_cast(value, device_type: str, dtype: torch.dtype, lower: bool):
    """value with its floating tensors on ``device_type`` cast to ``dtype``, through lists
    and tuples; ``lower``: float64 ones kept, as torch's autocast keeps them."""
    if isinstance(value, torch.Tensor):
        eligible = (value.is_floating_point() and value.device.type == device_type
                    and not (lower and value.dtype == torch.float64))
        return value.to(dtype) if eligible else value
    if isinstance(value, (list, tuple)):
        return type(value)(_autocast_cast(v, device_type, dtype, lower) for v in value)
    return value


def register_autocast(*names: str) -> None:
    """Under ``torch.autocast``, runs each op ("fastdl::op") with autocast off, its
    floating inputs first cast to one dtype: on CUDA the region's (float16 unless the
    region says otherwise), as torch runs its convolutions, attention and RNNs there; on
    CPU the widest among them, so that float32 layers keep fastdl's float32 kernels
    (torch's nn.GRU, nn.LSTMCell and nn.GRUCell also return float32 there).

    Why: without it a recurrent op ran with autocast still on, so the ATen GEMMs inside
    it returned the lower precision while its other tensors stayed float32 (a dtype
    mismatch); and a convolution behind an autocast layer got its lower-precision output
    against float32 weights and refused the mix, where nn.Conv2d and its kin cast both.
    (``torch.library.register_autocast`` fixes one dtype per device; this follows the
    region's.)"""
    for name in names:
        op_name = name.split("::")[1]
        op = getattr(torch.ops.fastdl, op_name).default
        for device_type in SUPPORTED_DEVICE_TYPES:

            def kernel(_keys, *args, _device_type=device_type, _op=op):
                if _device_type == "cpu":
                    dtypes = {t.dtype for t in _floating_on(args, _device_type)}
                    if len(dtypes) > 1:
                        widest = functools.reduce(torch.promote_types, dtypes)
                        args = _autocast_cast(args, _device_type, widest, lower=False)
                else:
                    args = _autocast_cast(args, _device_type,
                                          torch.get_autocast_dtype(_device_type), lower=True)
                with torch.autocast(_device_type, enabled=False):
                    return _op(*args)

            _AUTOCAST_LIB.impl(op_name, kernel, "Autocast" + device_type.upper(),
                               with_keyset=True)


# op overload -> (backward, setup_context), as given to register_autograd.
_FORMULAS = {}
# op overload -> jvp(ctx, tangents): forward mode under torch.func (register_conv_derivatives),
# from what the op's setup_context saved on ctx.
_JVPS = {}


def register_autograd(name: str, backward, setup_context) -> None:
    """``torch.library.register_autograd(name, backward, setup_context=...)``, with the
    formula kept for ``call_op`` under ``torch.func`` transforms. ``name``: "fastdl::op",
    whose default overload the wrappers call."""
    torch.library.register_autograd(name, backward, setup_context=setup_context)
    namespace, op_name = name.split("::")
    _FORMULAS[getattr(getattr(torch.ops, namespace), op_name).default] = (backward, setup_context)


def save_for_both_modes(ctx, *tensors) -> None:
    """``ctx.save_for_backward(*tensors)`` in an op's setup_context, and the same for its
    jvp (register_conv_derivatives), which sees only what ``save_for_forward`` saved."""
    ctx.save_for_backward(*tensors)
    ctx.save_for_forward(*tensors)


def _sum_terms(terms):
    return sum(terms[1:], terms[0]) if terms else None


def register_conv_derivatives(forward_op, backward_op) -> None:
    """Derivatives of every order for a convolution whose forward op is
    ``forward_op(input, weight, bias, *conv_args)`` and whose backward op is
    ``backward_op(grad_output, input, weight, *conv_args, output_mask) -> (grad_input,
    grad_weight, grad_bias)`` (the forward op's own first-order formula is registered
    beside it): the backward op's autograd formula (a gradient penalty, nested
    ``torch.func.grad``), and forward-mode rules for both ops (``torch.func.jvp``,
    ``jacfwd``, ``hessian``, ``torch.autograd.forward_ad``; through ``call_op``).

    The convolution is linear in input, in weight and in bias, and the backward op's
    outputs are linear in grad_output and in weight (grad_input) or input (grad_weight),
    so every derivative is these two ops again, themselves differentiable. With gg_* the
    incoming gradients of grad_input, grad_weight and grad_bias:
      d grad_output = forward(gg_input, weight) + forward(input, gg_weight) + gg_bias
                      (broadcast over the batch and the positions),
      d input       = grad_input of forward(., gg_weight) at grad_output,
      d weight      = grad_weight of forward(gg_input, .) at grad_output;
    and with t_* the tangents, forward(t_input, weight) + forward(input, t_weight) + t_bias
    for the forward op, backward(t_grad_output, input, weight) + (backward(grad_output,
    input, t_weight)'s grad_input, backward(grad_output, t_input, weight)'s grad_weight)
    for the backward op.
    """

    def bias_term(bias, like):
        return bias.view(1, -1, *([1] * (like.dim() - 2))).expand_as(like)

    def setup_context(ctx, inputs, output):
        grad_output, input, weight, *conv_args, mask = inputs
        save_for_both_modes(ctx, grad_output, input, weight)
        ctx.conv_args, ctx.output_mask = conv_args, mask

    def backward(ctx, gg_input, gg_weight, gg_bias):
        grad_output, input, weight = ctx.saved_tensors
        args = ctx.conv_args
        d_grad_output = d_input = d_weight = None
        if ctx.needs_input_grad[0]:
            terms = []
            if gg_input is not None:
                terms.append(call_op(forward_op, gg_input, weight, None, *args))
            if gg_weight is not None:
                terms.append(call_op(forward_op, input, gg_weight, None, *args))
            if gg_bias is not None:
                terms.append(bias_term(gg_bias, grad_output))
            d_grad_output = _sum_terms(terms)
        if ctx.needs_input_grad[1] and gg_weight is not None:
            d_input = call_op(backward_op, grad_output, input, gg_weight, *args,
                              [True, False, False])[0]
        if ctx.needs_input_grad[2] and gg_input is not None:
            d_weight = call_op(backward_op, grad_output, gg_input, weight, *args,
                               [False, True, False])[1]
        return (d_grad_output, d_input, d_weight, *([None] * (len(args) + 1)))

    # From what the setup_contexts saved for both modes: (input, weight) and conv_args
    # for the forward op (its own setup_context), (grad_output, input, weight), conv_args
    # and output_mask for the backward op (the one above). torch.func hands jvp its
    # primals through ctx.saved_tensors only.
    def forward_jvp(ctx, tangents):
        input, weight = ctx.saved_tensors
        args = ctx.conv_args
        t_input, t_weight, t_bias = tangents[:3]
        # t_bias rides as the bias of the first term (of a zero input's without one)
        terms = []
        if t_input is not None:
            terms.append(call_op(forward_op, t_input, weight, t_bias, *args))
            t_bias = None
        if t_weight is not None or t_bias is not None:
            if t_weight is None:
                input, t_weight = torch.zeros_like(input), weight
            terms.append(call_op(forward_op, input, t_weight, t_bias, *args))
        return _sum_terms(terms)

    def backward_jvp(ctx, tangents):
        grad_output, input, weight = ctx.saved_tensors
        args, mask = ctx.conv_args, ctx.output_mask
        t_grad_output, t_input, t_weight = tangents[:3]
        grads = [[], [], []]
        if t_grad_output is not None:
            for i, g in enumerate(call_op(backward_op, t_grad_output, input, weight, *args, mask)):
                if g is not None:
                    grads[i].append(g)
        if mask[0] and t_weight is not None:
            grads[0].append(call_op(backward_op, grad_output, input, t_weight, *args,
                                    [True, False, False])[0])
        if mask[1] and t_input is not None:
            grads[1].append(call_op(backward_op, grad_output, t_input, weight, *args,
                                    [False, True, False])[1])
        return tuple(_sum_terms(terms) for terms in grads)

    register_autograd(backward_op.name(), backward, setup_context)
    _JVPS[forward_op] = forward_jvp
    _JVPS[backward_op] = backward_jvp


class _Constant:
    """A list argument without tensors (strides, paddings, an output mask) as one leaf
    for ``_FormulaFunction``: torch.func's generated vmap rule flattens list inputs into
    their elements, then pairs those with the per-input tangents in forward mode, one
    per input, and fails on the mismatch ("leaves has length 8 but the spec refers to a
    pytree that holds 13 items")."""

    def __init__(self, value):
        self.value = value

    @staticmethod
    def wrap(value):
        if isinstance(value, (list, tuple)) and not any(
                isinstance(v, torch.Tensor) for v in value):
            return _Constant(value)
        return value

    @staticmethod
    def unwrap(values):
        return tuple(v.value if isinstance(v, _Constant) else v for v in values)


class _FormulaFunction(torch.autograd.Function):
    """An op's registered autograd formula as an autograd.Function that ``torch.func``
    transforms accept; the op is its first input.

    Why: the autograd kernel ``torch.library.register_autograd`` makes for an op defined
    in C++ runs an autograd.Function without a ``setup_context``, which every
    ``torch.func`` transform refuses ("must override the setup_context staticmethod"), so
    ``torch.func.grad`` of a model with fastdl layers failed. vmap runs the op once per
    sample (PyTorch's batching fallback, which warns): correct, not fast.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(op, *args):
        return op(*_Constant.unwrap(args))

    @staticmethod
    def setup_context(ctx, inputs, output):
        op, *args = inputs
        args = _Constant.unwrap(args)
        ctx.formula_op = op
        _, setup = _FORMULAS[op]
        setup(ctx, args, output)

    @staticmethod
    def backward(ctx, *grads):
        # The formula sees its op's inputs only, as under register_autograd.
        backward, _ = _FORMULAS[ctx.formula_op]
        needs = ctx.needs_input_grad
        ctx.needs_input_grad = needs[1:]
        try:
            result = backward(ctx, *grads)
        finally:
            ctx.needs_input_grad = needs
        return (None, *result) if isinstance(result, tuple) else (None, result)

    @staticmethod
    def jvp(ctx, _op_tangent, *tangents):
        jvp = _JVPS.get(ctx.formula_op)
        if jvp is None:  # autograd.Function's own message names no op
            raise NotImplementedError(
                f"fastdl: {ctx.formula_op}: forward-mode AD (torch.func.jvp, jacfwd, hessian, "
                "torch.autograd.forward_ad) is not supported; reverse mode is "
                "(torch.func.grad, vjp, jacrev)")
        if _nested_forward_mode():
            # PyTorch gives an autograd.Function's jvp the inner level's tangents only and
            # drops the outer level's: second forward-mode derivatives came out wrong
            # (pytorch/pytorch#197867), so refuse them.
            raise NotImplementedError(
                f"fastdl: {ctx.formula_op}: nested forward mode (jvp of jvp, jacfwd of jacfwd) "
                "is not supported; reverse over forward is (hessian = jacfwd(jacrev))")
        return jvp(ctx, tangents)


def _nested_forward_mode() -> bool:
    """Whether two torch.func Jvp transforms are active (forward_ad's dual levels do not
    nest at all)."""
    return sum(interpreter.key() == TransformType.Jvp
               for interpreter in retrieve_all_functorch_interpreters()) >= 2


def needs_grad(*values) -> bool:
    """Whether autograd records a call on ``values``: grad mode is on and a tensor among
    them (in lists and tuples too) requires a gradient."""
    return torch.is_grad_enabled() and _any_requires_grad(values)


def _any_requires_grad(values) -> bool:
    for value in values:
        if isinstance(value, torch.Tensor):
            if value.requires_grad:
                return True
        elif isinstance(value, (list, tuple)) and _any_requires_grad(value):
            return True
    return False


def pair(op: str, name: str, value) -> list[int]:
    """An int or a pair of ints as a two-element list (the ops' int[2] arguments)."""
    values = [value, value] if isinstance(value, int) else (
        list(value) if isinstance(value, (list, tuple, torch.Size)) else None)
    if values is None or len(values) != 2 or not all(isinstance(v, int) for v in values):
        raise ValueError(f"fastdl.{op}: {name} must be an int or a pair of ints, got {value!r}")
    return values


def mark_saved_outputs(ctx, *outputs: torch.Tensor) -> None:
    """In an autograd ``setup_context``: marks outputs returned only for the backward
    (saved gates, cells) non-differentiable, and has every gradient that does not flow
    arrive in the backward as None instead of a zero tensor, which autograd would
    otherwise allocate and fill for each such output (an LSTM layer's (T, B, 4H) gates
    are 105 MB at hidden 1024, batch 64, 100 steps: 2.5% of its backward). The backward
    must then accept None for any output's gradient."""
    ctx.mark_non_differentiable(*outputs)
    ctx.set_materialize_grads(False)
