"""Every example runs in its quick mode and reports what it measured."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("script, needs, expected", [
    ("mobilenet_v2.py", "torchvision", "parity: ok"),
    ("detection_postprocess.py", "torchvision", "parity: ok"),
    # One epoch is too short for the accuracies to settle; the table must be there.
    ("digits_training.py", "sklearn", "| ResNet-style | fastdl |"),
    # Also asserts (inside the script) that the packed binary net matches the unpacked one.
    ("xnor_digits.py", "sklearn", "| XNOR (fastdl) |"),
    # nn.LSTM vs fastdl.nn.LSTM on stdlib source; the final table must be there.
    ("char_lstm.py", "torch", "| fastdl.nn.LSTM |"),
    # Also asserts (inside the script) that KV-cache generation matches recomputation.
    ("tiny_gpt.py", "torch", "KV cache parity: ok"),
    # Also asserts (inside the script) that queue generation matches the naive recompute.
    ("wavenet.py", "torch", "queue parity: ok"),
    # Also asserts (inside the script) that the penalty's gradients match float64's.
    ("gradient_penalty.py", "torch", "penalty parity: ok"),
])
def test_example_runs(script, needs, expected):
    pytest.importorskip(needs)
    result = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout, result.stdout
