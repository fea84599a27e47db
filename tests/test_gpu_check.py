"""benchmarks/gpu_check.py's CPU paths end to end on the tiny bundle (the GPU check itself needs
a GPU; this keeps its code working against the engine as it changes). Slow: about 4 minutes on
2 cores; run with `pytest -m slow tests/test_gpu_check.py`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_cpu_paths_pass(tmp_path):
    cmd = [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--full-from-tiny", "--quick"]
    cmd += ["--seconds", "1", "--budget", "1200", "--out", str(tmp_path)]
    cmd += ["--sections", "env,golden,tiny,fullgen,full,train"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "===== metis GPU check =====" in proc.stdout and " 0 FAIL" in proc.stdout
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert all(s["status"] == "ok" for s in res["sections"].values()), res["sections"].keys()
