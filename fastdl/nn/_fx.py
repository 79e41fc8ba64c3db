"""torch.fx.symbolic_trace sees a fastdl layer as one call, as it sees torch's layers.

FX's tracer treats modules from ``torch.nn`` as leaves: it records ``self.conv(x)`` as one
node and never runs their forward on its proxies. fastdl's layers live in ``fastdl.nn``,
so the tracer ran their forward, and the first Python branch on a proxy (``input.dim()``,
a shape check) failed with a TraceError. That broke tracing any model with a fastdl
layer: torchvision's ``create_feature_extractor``, FX quantization, FX passes.

``leaf_forward`` wraps a layer's forward: given an FX proxy, it records one call of
``call_layer(layer, *args)``, a function that ``torch.fx.wrap`` makes FX record rather
than trace, and the traced graph runs the layer itself. A layer that is the traced root
has no attribute path to refer to it by, so its forward runs as before (torch's
``nn.LSTM`` and ``nn.MultiheadAttention`` cannot be traced as the root either). Nor is a
layer recorded when no argument is a proxy (a layer applied to a constant inside a
traced model: its forward meets its parameters as proxies and fails as before).
"""

import functools

import torch.fx


def call_layer(layer, *args, **kwargs):
    """Runs ``layer`` on the arguments: what a traced graph's node for a fastdl layer calls."""
    return layer(*args, **kwargs)


torch.fx.wrap("call_layer")


def _first_proxy(values):
    """The first FX proxy among `values` or inside their tuples and lists, else None."""
    for value in values:
        if isinstance(value, torch.fx.Proxy):
            return value
        if isinstance(value, (tuple, list)):
            found = _first_proxy(value)
            if found is not None:
                return found
    return None


def leaf_forward(forward):
    """Decorator for a fastdl layer's ``forward``: under ``torch.fx.symbolic_trace`` the
    layer's call becomes one node, as a ``torch.nn`` layer's does."""

    @functools.wraps(forward)
    def traced_as_leaf(self, *args, **kwargs):
        proxy = _first_proxy(args)
        if proxy is None:
            proxy = _first_proxy(kwargs.values())
        # While FX traces, it replaces this module's global call_layer by a function
        # that records the call; outside tracing this costs one walk over the arguments.
        if proxy is not None and proxy.tracer.root is not self:
            return call_layer(self, *args, **kwargs)
        return forward(self, *args, **kwargs)

    return traced_as_leaf
