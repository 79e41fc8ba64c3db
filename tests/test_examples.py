"""Every example runs (in its quick mode) and reports parity."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("script", ["mobilenet_v2.py", "detection_postprocess.py"])
def test_example_runs(script):
    pytest.importorskip("torchvision")
    result = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "parity: ok" in result.stdout, result.stdout
