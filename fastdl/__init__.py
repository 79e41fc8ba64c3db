"""fastdl: hand-written C++/CUDA kernels for PyTorch layers that stock PyTorch runs slowly.

Ops live in :mod:`fastdl.ops` (``nms``, ``batched_nms``, ``depthwise_conv2d``,
``dilated_conv2d``, ``dilated_conv1d``, ``batch_norm``, ``lstm_cell``, ``lstm_layer``,
``gru_cell``, ``gru_layer``, ``attention``, ``pack_signs``, ``xnor_conv2d``,
``xnor_conv2d_packed``), layers in :mod:`fastdl.nn`; the ops are
registered with the dispatcher as ``torch.ops.fastdl.*``, so they work with autograd,
``torch.compile`` and ``torch.library.opcheck``. ``python -m fastdl`` prints what this
build gives on this machine.
"""

import torch


def _load_extension():
    # Compare versions before loading _C: a library built against another torch
    # fails to load with an undefined-symbol trace that names neither version.
    try:
        from . import _build_info
    except ImportError as e:
        raise ImportError(
            "fastdl: the compiled extension is missing (fastdl/_build_info.py not found); "
            "build it with `pip install .` or `pip install -e .`"
        ) from e
    if _build_info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"fastdl was built against torch {_build_info.TORCH_VERSION}, but torch "
            f"{torch.__version__} is installed; rebuild fastdl against this torch "
            "(pip install --no-build-isolation --force-reinstall .) or install torch "
            f"{_build_info.TORCH_VERSION}"
        )
    from . import _C

    return _C, _build_info


_C, build_info = _load_extension()

from . import ops  # noqa: E402  (registers fake kernels; needs _C loaded first)
from . import nn  # noqa: E402
from .convert import ConversionReport, convert, fold_bn  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ops", "nn", "convert", "ConversionReport", "fold_bn", "build_info", "__version__"]
