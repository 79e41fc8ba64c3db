"""`python -m fastdl`: build info, parity and speed table, JSON output."""

import json
import subprocess
import sys

import torch

import fastdl.__main__ as cli
from fastdl.bench.cases import Case, ReferenceUnavailable


def test_main_reports_parity_and_speed(tmp_path):
    # An op whose reference is torch's own (nms's is torchvision, which a torch build
    # without a matching torchvision, such as the CPU-only 2.13 wheel, lacks).
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "fastdl", "--op", "lstm_cell", "--device", "cpu",
         "--repeats", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CPU ISA path" in done.stdout and "| lstm_cell |" in done.stdout
    results = json.loads(out.read_text())["results"]
    assert results and all(r["parity"] == "ok" and r["speedup"] > 0 for r in results)


def test_missing_reference_package_is_reported_not_failed():
    def unavailable(*args):
        raise ReferenceUnavailable("somepkg is not installed")

    case = Case("nms", "tiny", "somepkg.nms", lambda device: (torch.ones(1),), torch.neg, unavailable)
    row = cli.run_case(case, torch.device("cpu"), repeats=1)
    assert row.parity == "skipped: somepkg is not installed" and row.speedup is None


def test_mismatch_is_reported():
    case = Case("nms", "tiny", "torch.exp", lambda device: (-torch.ones(3),), torch.neg, torch.exp)
    row = cli.run_case(case, torch.device("cpu"), repeats=1)
    assert row.parity == "MISMATCH"
