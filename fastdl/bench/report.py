"""Machine description and ratio tables, shared by ``python -m fastdl`` and
``benchmarks/report.py``."""

import os
import platform
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from .. import _C, __version__, build_info


@dataclass
class Row:
    op: str
    case: str
    device: str
    reference: str
    parity: str  # "ok", "MISMATCH" or the error raised
    fastdl_ms: Optional[float]
    reference_ms: Optional[float]
    flops: float = 0.0  # arithmetic per call, when the case states it

    @property
    def fastdl_gflops(self) -> Optional[float]:
        if not self.flops or not self.fastdl_ms:
            return None
        return self.flops / (self.fastdl_ms * 1e-3) / 1e9

    @property
    def speedup(self) -> Optional[float]:
        if not self.fastdl_ms or not self.reference_ms:
            return None
        return self.reference_ms / self.fastdl_ms

    def as_dict(self) -> dict:
        return dict(asdict(self), speedup=self.speedup, fastdl_gflops=self.fastdl_gflops)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {
        "fastdl": __version__,
        "torch": torch.__version__,
        "built against torch": build_info.TORCH_VERSION,
        "CUDA kernels compiled": bool(_C.cuda_compiled),
        "built for CUDA": build_info.CUDA_VERSION or "-",
        "CUDA archs": build_info.CUDA_ARCH_LIST or "-",
        "GPUs seen": ", ".join(gpus) or "none",
        "CPU": cpu_model(),
        "CPU cores": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "CPU ISA path": f"{_C.cpu_isa()} (best on this CPU: {_C.best_cpu_isa()})",
    }


def format_info(info: dict) -> str:
    width = max(len(key) for key in info)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in info.items())


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_table(rows: list[Row]) -> str:
    """A Markdown table; speedup = reference time / fastdl time (higher is better). A
    fastdl GFLOP/s column is added when some case states its arithmetic."""
    rates = any(r.flops for r in rows)
    lines = [
        "| op | case | device | reference | parity | fastdl ms | reference ms | speedup |"
        + (" fastdl GFLOP/s |" if rates else ""),
        "|---|---|---|---|---|---:|---:|---:|" + ("---:|" if rates else ""),
    ]
    for r in rows:
        speedup = "-" if r.speedup is None else f"**{r.speedup:.2f}x**"
        rate = "-" if r.fastdl_gflops is None else f"{r.fastdl_gflops:.0f}"
        lines.append(
            f"| {r.op} | {r.case} | {r.device} | {r.reference} | {r.parity} | "
            f"{_ms(r.fastdl_ms)} | {_ms(r.reference_ms)} | {speedup} |"
            + (f" {rate} |" if rates else "")
        )
    return "\n".join(lines)
