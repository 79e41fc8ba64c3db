"""Builds fastdl's CUDA kernels for the CPU emulator (emu_runtime.h) as the torch
library ``torch.ops.fastdl_emu``: each ``csrc/<op>/*_cuda.cu`` with its kernel launches
rewritten as ``emu::launch`` calls, plus ``csrc/<op>/<op>.cpp`` for the op schemas and
argument checks. Needs the CUDA headers (``CUDA_HOME`` or /usr/local/cuda), not a GPU."""

from __future__ import annotations

import os
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSRC = ROOT / "csrc"

# The files that hold each op's schema and checks (the .cu files' other halves).
OP_SOURCES = [
    "attention/attention.cpp", "batch_norm/batch_norm.cpp", "depthwise/depthwise_conv2d.cpp",
    "dilated_conv/dilated_conv.cpp", "gru/gru_cell.cpp", "lstm/lstm_cell.cpp", "nms/nms.cpp",
    "xnor/xnor_conv2d.cpp",
]


def cuda_home() -> Path | None:
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and (Path(candidate) / "include" / "cuda_fp16.h").exists():
            return Path(candidate)
    return None


def _matching(text: str, start: int, open_: str, close: str, step: int) -> int:
    """Index of the bracket that balances the one at ``start``, scanning by ``step``."""
    depth = 0
    i = start
    while 0 <= i < len(text):
        if text[i] == open_:
            depth += 1
        elif text[i] == close:
            depth -= 1
            if depth == 0:
                return i
        i += step
    raise ValueError(f"unbalanced {open_}{close} at offset {start}")


def rewrite_launches(text: str) -> str:
    """``kernel<T, N><<<grid, block, bytes, stream>>>(args);`` ->
    ``::emu::launch([&] { kernel<T, N>(args); }, grid, block, bytes, stream);``"""
    while (begin := text.find("<<<")) >= 0:
        end = text.index(">>>", begin)
        # the callee: an identifier path, maybe with template arguments, before <<<
        i = begin - 1
        while text[i].isspace():
            i -= 1
        if text[i] == ">":
            i = _matching(text, i, ">", "<", -1) - 1
        while i >= 0 and (text[i].isalnum() or text[i] in "_:"):
            i -= 1
        callee_start = i + 1
        callee = text[callee_start:begin].strip()
        args_open = end + 3
        while text[args_open].isspace():
            args_open += 1
        if text[args_open] != "(":
            raise ValueError(f"no argument list after launch of {callee}")
        args_close = _matching(text, args_open, "(", ")", 1)
        config = text[begin + 3:end]
        args = text[args_open:args_close + 1]
        replacement = f"::emu::launch([&] {{ {callee}{args}; }}, {config})"
        text = text[:callee_start] + replacement + text[args_close + 1:]
    return text


_DYNAMIC_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([A-Za-z_][\w:]*(?:\s+[A-Za-z_][\w:]*)*)\s+(\w+)\s*\[\s*\]\s*;")


def rewrite_dynamic_shared(text: str) -> str:
    return _DYNAMIC_SHARED.sub(
        lambda m: f"{m[1]}* {m[2]} = static_cast<{m[1]}*>(::emu::dynamic_shared());", text)


_STATIC_SHARED = re.compile(
    r"(?<!extern )(__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?[^;()]*?\b(\w+)\s*(?:\[[^;]*\])?\s*;)")


def poison_static_shared(text: str) -> str:
    """``__shared__ float tile[64][68];`` -> the same, then ``::emu::poison_shared(...)``."""
    return _STATIC_SHARED.sub(
        lambda m: f"{m[1]} ::emu::poison_shared(&{m[2]}, sizeof({m[2]}));", text)


def emulated_sources(out_dir: Path) -> list[str]:
    """The .cu files and the emulator's own test kernels, rewritten into ``out_dir`` as
    .cpp (a #line keeps errors pointing at the original), and the op .cpp files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = []
    for cu in [*sorted(CSRC.glob("*/*_cuda.cu")), HERE / "selftest_cuda.cu"]:
        text = poison_static_shared(rewrite_dynamic_shared(rewrite_launches(cu.read_text())))
        target = out_dir / (cu.stem + "_emu.cpp")
        content = f'#line 1 "{cu}"\n{text}'
        if not target.exists() or target.read_text() != content:
            target.write_text(content)
        sources.append(str(target))
    return sources + [str(CSRC / s) for s in OP_SOURCES]


def load(build_dir: Path | None = None, verbose: bool = False) -> None:
    """Builds (or reuses) and loads the emulated ops as torch.ops.fastdl_emu. With
    FASTDL_CUDA_EMU=asan the kernels are built with AddressSanitizer, so an access
    outside any tensor stops the test (run python with libasan preloaded, see README)."""
    from torch.utils import cpp_extension

    cuda = cuda_home()
    if cuda is None:
        raise RuntimeError("the CUDA emulator needs the CUDA headers (set CUDA_HOME)")
    asan = os.environ.get("FASTDL_CUDA_EMU") == "asan"
    build_dir = build_dir or ROOT / "build" / ("cuda_emu_asan" if asan else "cuda_emu")
    sources = emulated_sources(build_dir / "src")
    sanitize = ["-fsanitize=address", "-fno-omit-frame-pointer"] if asan else []
    cpp_extension.load(
        name="fastdl_cuda_emu_asan" if asan else "fastdl_cuda_emu",
        sources=sources,
        extra_include_paths=[str(HERE / "include"), str(CSRC), str(cuda / "include")],
        extra_cflags=["-O1", "-std=c++20", "-include", str(HERE / "emu_runtime.h"),
                      "-Wno-attributes", "-Wno-unused-function", *sanitize],
        extra_ldflags=sanitize,
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=verbose,
    )
