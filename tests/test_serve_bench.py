"""benchmarks/serve_bench.py end to end on the tiny bundle: every measurement runs and says what
it measured (the figures themselves are meaningless on tiny models and are not checked). Slow:
about a minute on 2 cores; run with `pytest -m slow tests/test_serve_bench.py`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_serve_bench_runs_every_measurement(tmp_path):
    out = tmp_path / "rows.json"
    cmd = [sys.executable, "benchmarks/serve_bench.py", "--tiny", "--task", "tts", "--clients", "1,2"]
    cmd += ["--requests", "2", "--requests-at-1", "1", "--cli-requests", "1"]
    cmd += ["--stream-requests", "1", "--voice-requests", "2", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    by = {(r["config"], r["clients"]): r for r in rows}
    assert set(by) == {
        ("batched", 1), ("batched", 2), ("batch-1", 1), ("batch-1", 2), ("cli-loop", 1),
        ("stream", 1), ("stream-off", 1), ("voice-miss", 1), ("voice-hit", 1),
    }  # fmt: skip
    assert by[("batched", 1)]["requests"] == 1 and by[("batched", 2)]["requests"] == 2
    for key in [("batched", 1), ("batched", 2), ("batch-1", 1), ("batch-1", 2)]:
        row = by[key]
        assert row["ok"] == row["requests"] and row["errors"] == [], row
        assert 0 < row["first_audio_p50"] <= row["p50"], row
        assert sum(row["batches"].values()) >= 1, row
    assert set(by[("batch-1", 2)]["batches"]) == {"1"}  # --max-batch 1 ran batches of one
    # the streamed 3-sentence text: first audio before the whole answer; the same audio length
    stream, whole = by[("stream", 1)], by[("stream-off", 1)]
    assert 0 < stream["first_audio_p50"] < stream["p50"] and stream["first_over_total"] < 1
    assert whole["first_over_total"] > 0.9
    assert stream["audio_seconds"] > 0 and whole["audio_seconds"] > 0
    # every new upload is a prompt-cache miss, the same upload again a hit (from /metrics)
    assert by[("voice-miss", 1)]["prompt_cache"] == {"hit": 0, "miss": 2}
    assert by[("voice-hit", 1)]["prompt_cache"] == {"hit": 2, "miss": 0}
    assert "batched / batch-1 throughput" in proc.stdout and "cached prompt saves" in proc.stdout
