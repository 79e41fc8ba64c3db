"""Running the multi-process test workers (tests/*_worker.py): each spawns its own
gloo processes and saves what they computed under an output folder."""

import importlib
import socket
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def run_worker(name: str, out_dir: Path):
    """Runs tests/<name>.py OUT_DIR PORT (a free local port) to completion and returns
    the worker module, whose helpers the test reuses for its single-process side."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([sys.executable, str(TESTS / f"{name}.py"), str(out_dir), str(port)],
                   check=True, timeout=300, cwd=TESTS)
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    return importlib.import_module(name)
