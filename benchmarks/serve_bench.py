"""Service benchmark: concurrent clients against `metis serve` (not part of the test suite).

    python benchmarks/serve_bench.py --tiny                         # tiny random bundle (quick check)
    python benchmarks/make_full_size.py --tasks se                  # once: full-size random weights
    python benchmarks/serve_bench.py --checkpoint-dir .bench_cache --task se --dtype bfloat16

Three ways to serve the same requests (equal inputs, seeds and decoding):
  batched    `metis serve --max-batch M` (dynamic batching), with 1, 4 and 8 concurrent clients
  batch-1    the same service with `--max-batch 1`, same clients
  cli-loop   one `metis` process per request, one after the other (the shell loop the service replaces)

Per row: requests, wall seconds, throughput (seconds of output audio per wall second), p50/p95
request latency, time to first audio (first response byte; equal to the latency when the answer is
a whole file), and the batch sizes the service ran (from its /metrics histogram). Each server is
a fresh process on a free loopback port. Machines here are noisy and shared: compare rows of one
invocation only, and publish only figures measured on a quiet machine.

For tts two more measurements run on the batched service, one client at a time:
  stream     a 3-sentence text on POST /v1/audio/speech with stream_format "audio" (pcm): time to
             first audio against the whole response's time, and the same text not streamed
  voice      POST /v1/tts with an uploaded prompt: every upload different (a prompt-cache miss:
             w2v-BERT + both codecs run) against the same upload again (a hit); the difference
             is the prompt-encoding time the cache saves (the /metrics hit/miss counts are shown)
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
TEXT = "The quick brown fox jumps over the lazy dog near the river bank."
STREAM_TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "It ran across the field before the rain began. "
    "Then it rested under the old oak tree until morning."
)
PROMPT_TEXT = "This is the transcript of the speaker prompt for the benchmark."


def speechlike(seconds: float, sr: int = 24_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t) ** 2
    wav = sum(np.sin(2 * np.pi * 180.0 * k * t) / k for k in range(1, 5)) * env * 0.1
    return (wav + 0.005 * rng.standard_normal(len(t))).astype(np.float32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def batch_histogram(url: str, task: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    out = {}
    for le, v in re.findall(rf'metis_batch_size_bucket\{{le="([^"]+)",task="{task}"\}} ([0-9.e+]+)', text):
        out[le] = float(v)
    return out


def histogram_diff(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Cumulative bucket counts → batches per size range ("<=1", "2", "3-4", ...)."""
    les = sorted((k for k in after if k != "+Inf"), key=float)
    out, prev_le, prev = {}, 0, 0.0
    for le in les:
        n = after[le] - before.get(le, 0.0)
        if n - prev > 0:
            lo, hi = int(prev_le) + 1, int(float(le))
            out[str(hi) if lo == hi else f"{lo}-{hi}"] = int(n - prev)
        prev, prev_le = n, float(le)
    return out


class Server:
    def __init__(self, args: argparse.Namespace, max_batch: int, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable, "-m", "metis_cli.cli", "serve", "--tasks", args.task, "--port", str(self.port),
            "--max-batch", str(max_batch), "--max-wait-ms", str(args.max_wait_ms), "--max-queue", "1000",
            "--request-timeout", str(args.request_timeout),
            *common_options(args),
        ]  # fmt: skip
        if args.voice is not None:
            cmd += ["--voices", str(args.voice)]
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=bench_env())
        t0 = time.perf_counter()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"metis serve exited {self.proc.returncode}: see {log}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - t0 > args.ready_timeout:
                raise TimeoutError(f"not ready in {args.ready_timeout} s: see {log}")
            time.sleep(0.2)
        self.ready_seconds = time.perf_counter() - t0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def bench_env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("METIS_API_KEY", None)
    env.pop("METIS_SERVER", None)
    return env


def common_options(args: argparse.Namespace) -> list[str]:
    out = ["--checkpoint-dir", str(args.checkpoint_dir), "--offline", "--dtype", args.dtype]
    for k, v in args.decoding.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def request_fn(args: argparse.Namespace, inputs: dict) -> tuple[str, dict]:
    if args.task == "tts":
        return "/v1/tts", {"data": {"voice": "bench", "text": TEXT}}
    role = {"se": "input", "tse": "mix", "vc": "source"}[args.task]
    files = {role: ("in.wav", inputs["main"])}
    if args.task in ("tse", "vc"):
        files["enrol" if args.task == "tse" else "reference"] = ("ref.wav", inputs["prompt"])
    return f"/v1/{ {'se': 'enhance'}.get(args.task, args.task) }", {"files": files}


@dataclass
class Answer:
    """One POST read as it arrived: status, seconds to its first body byte and to its end."""

    status: int
    first: float = 0.0
    total: float = 0.0
    size: int = 0  # body bytes
    reads: int = 0  # non-empty reads of the body
    headers: httpx.Headers | None = None
    error: bytes = b""  # the body of an answer other than 200


def timed_post(http: httpx.Client, url: str, **request: object) -> Answer:
    t0 = time.perf_counter()
    with http.stream("POST", url, **request) as r:
        if r.status_code != 200:
            return Answer(r.status_code, error=r.read())
        answer = Answer(200, headers=r.headers)
        for chunk in r.iter_bytes():
            if chunk:
                answer.first = answer.first or time.perf_counter() - t0
                answer.size += len(chunk)
                answer.reads += 1
    answer.total = time.perf_counter() - t0
    answer.first = answer.first or answer.total
    return answer


def run_clients(url: str, args: argparse.Namespace, inputs: dict, clients: int, total: int) -> dict:
    path, kw = request_fn(args, inputs)
    latencies: list[float] = []
    first_audio: list[float] = []
    audio = [0.0]
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(total))
    start = threading.Barrier(clients)  # the clients send their first requests together

    def client() -> None:
        with httpx.Client(timeout=args.request_timeout) as http:
            start.wait()
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                data = {**kw.get("data", {}), "seed": str(1000 + i)}
                answer = timed_post(http, url + path, data=data, files=kw.get("files"))
                with lock:
                    if answer.status == 200:
                        latencies.append(answer.total)
                        first_audio.append(answer.first)
                        audio[0] += float(answer.headers["x-metis-output-seconds"])
                    else:
                        errors.append(f"{answer.status} {answer.error[:120]!r}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "requests": total,
        "ok": len(latencies),
        "errors": errors[:3],
        "wall_seconds": round(wall, 3),
        "audio_seconds": round(audio[0], 3),
        "throughput": round(audio[0] / wall, 4) if wall else None,
        "p50": round(percentile(latencies, 0.5), 3),
        "p95": round(percentile(latencies, 0.95), 3),
        "first_audio_p50": round(percentile(first_audio, 0.5), 3),
    }


def stream_rows(url: str, args: argparse.Namespace, repeats: int) -> list[dict]:
    """A 3-sentence text, one client: streamed (time to first audio, whole time) and not streamed."""
    body = {"model": "tts-1", "input": STREAM_TEXT, "voice": "bench", "response_format": "pcm"}
    rows = []
    for label, extra in (("stream", {"stream_format": "audio"}), ("stream-off", {})):
        firsts, totals, chunks, samples = [], [], [], 0
        with httpx.Client(timeout=args.request_timeout) as http:
            for i in range(repeats):
                answer = timed_post(http, url + "/v1/audio/speech", json={**body, **extra, "seed": 2000 + i})
                if answer.status != 200:
                    raise RuntimeError(f"{label}: {answer.status} {answer.error[:200]!r}")
                totals.append(answer.total)
                firsts.append(answer.first)
                chunks.append(answer.reads)
                samples = answer.size // 2
        ratios = [f / t for f, t in zip(firsts, totals, strict=True)]
        first_audio = round(percentile(firsts, 0.5), 3)
        extra = {"first_audio_p50": first_audio, "first_over_total": round(percentile(ratios, 0.5), 3)}
        rows.append(one_client_row(label, totals, **extra, chunks=chunks, audio_seconds=samples / 24_000))
    return rows


def one_client_row(label: str, times: list[float], **extra: object) -> dict:
    """A row of one client's sequential requests (printed as JSON as it is made)."""
    row = {"config": label, "clients": 1, "requests": len(times), "ok": len(times)}
    row.update(p50=round(percentile(times, 0.5), 3), p95=round(percentile(times, 0.95), 3), **extra)
    print(json.dumps(row), flush=True)
    return row


def prompt_cache_counts(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    found = re.findall(r'metis_prompt_cache_total\{event="(\w+)"\} ([0-9.e+]+)', text)
    return {event: float(v) for event, v in found}


def voice_rows(url: str, args: argparse.Namespace, repeats: int) -> list[dict]:
    """POST /v1/tts with an uploaded prompt: a new prompt each time (miss) vs the same one (hit)."""
    seconds = min(max(args.seconds, 3.0), 10.0)
    same = wav_bytes(speechlike(seconds, seed=2))
    rows = []
    with httpx.Client(timeout=args.request_timeout) as http:

        def post(prompt: bytes, seed: int) -> float:
            data = {"text": TEXT, "prompt_text": PROMPT_TEXT, "prompt_language": "en", "seed": str(seed)}
            t0 = time.perf_counter()
            r = http.post(url + "/v1/tts", data=data, files={"prompt": ("p.wav", prompt)})
            if r.status_code != 200:
                raise RuntimeError(f"/v1/tts: {r.status_code} {r.text[:200]}")
            return time.perf_counter() - t0

        post(same, 3000)  # the hit rows' prompt, encoded once
        for label in ("voice-miss", "voice-hit"):
            before = prompt_cache_counts(url)
            times = []
            for i in range(repeats):
                prompt = wav_bytes(speechlike(seconds, seed=100 + i)) if label == "voice-miss" else same
                times.append(post(prompt, 3000 + i))
            after = prompt_cache_counts(url)
            counts = {k: int(after.get(k, 0) - before.get(k, 0)) for k in after}
            rows.append(one_client_row(label, times, prompt_cache=counts))
    return rows


def wav_bytes(wav: np.ndarray, sr: int = 24_000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wav, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def cli_loop(args: argparse.Namespace, files: dict[str, Path], total: int, out_dir: Path) -> dict:
    latencies, audio = [], 0.0
    t_all = time.perf_counter()
    for i in range(total):
        out = out_dir / f"cli-{i}.wav"
        if args.task == "tts":
            cmd = ["tts", "--prompt", str(files["prompt"]), "--prompt-text", PROMPT_TEXT, "-t", TEXT]
        elif args.task == "se":
            cmd = ["enhance", str(files["main"])]
        else:
            cmd = [args.task, str(files["main"]), str(files["prompt"])]
        cmd = [
            sys.executable,
            "-m",
            "metis_cli.cli",
            *cmd,
            "-o",
            str(out),
            "--overwrite",
            "--seed",
            str(1000 + i),
        ]
        cmd += common_options(args) + ["--quiet"]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=bench_env(), stdout=subprocess.DEVNULL)
        latencies.append(time.perf_counter() - t0)
        audio += sf.info(str(out)).duration
    wall = time.perf_counter() - t_all
    return {
        "requests": total,
        "ok": total,
        "wall_seconds": round(wall, 3),
        "audio_seconds": round(audio, 3),
        "throughput": round(audio / wall, 4),
        "p50": round(percentile(latencies, 0.5), 3),
        "p95": round(percentile(latencies, 0.95), 3),
    }


def print_tables(rows: list[dict]) -> None:
    """Markdown tables: throughput rows, then the stream and voice rows (tts)."""
    print("| config | clients | requests | wall s | audio s / wall s | p50 s | p95 s ", end="")
    print("| first audio p50 s | batches |")
    print("| --- " * 9 + "|")
    for r in rows:
        if "throughput" not in r:
            continue
        batches = ", ".join(f"{k}: {v}" for k, v in r.get("batches", {}).items()) or "-"
        print(
            f"| {r['config']} | {r['clients']} | {r['ok']}/{r['requests']} | {r['wall_seconds']} | "
            f"{r['throughput']} | {r['p50']} | {r['p95']} | {r.get('first_audio_p50', '-')} | {batches} |"
        )
    streams = [r for r in rows if r["config"].startswith("stream")]
    if streams:
        print("\n| 3-sentence text | requests | first audio p50 s | whole response p50 s ", end="")
        print("| first / whole | chunks |")
        print("| --- " * 6 + "|")
        for r in streams:
            print(
                f"| {r['config']} | {r['requests']} | {r['first_audio_p50']} | {r['p50']} | "
                f"{r['first_over_total']} | {r['chunks']} |"
            )
    voices = [r for r in rows if r["config"].startswith("voice")]
    if voices:
        print("\n| uploaded prompt | requests | p50 s | p95 s | prompt cache (metrics delta) |")
        print("| --- " * 5 + "|")
        for r in voices:
            print(f"| {r['config']} | {r['requests']} | {r['p50']} | {r['p95']} | {r['prompt_cache']} |")
        by = {r["config"]: r for r in voices}
        if len(by) == 2:
            saved = by["voice-miss"]["p50"] - by["voice-hit"]["p50"]
            print(f"\ncached prompt saves {saved:.2f} s per request (p50)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="se", choices=("se", "tts", "tse", "vc"))
    ap.add_argument(
        "--tiny", action="store_true", help="use a tiny random bundle (quick check, meaningless speed)"
    )
    ap.add_argument("--checkpoint-dir", type=Path, default=REPO / ".bench_cache")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--requests", type=int, default=16, help="requests per row")
    ap.add_argument("--requests-at-1", type=int, help="requests of the 1-client rows (default: --requests)")
    ap.add_argument("--cli-requests", type=int, default=4, help="requests of the CLI loop (0: skip it)")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=50.0)
    ap.add_argument("--seconds", type=float, default=4.0, help="input / prompt length (s)")
    ap.add_argument(
        "--set", action="append", default=[], metavar="K=V", help="decoding option, e.g. steps=10"
    )
    ap.add_argument(
        "--only", default="batched,batch-1,cli-loop,stream,voice", help="which measurements (comma list)"
    )
    ap.add_argument("--stream-requests", type=int, default=3, help="tts: requests per stream row")
    ap.add_argument("--voice-requests", type=int, default=3, help="tts: requests per voice row")
    ap.add_argument("--ready-timeout", type=float, default=900.0)
    ap.add_argument("--request-timeout", type=float, default=1800.0)
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args(argv)
    args.decoding = dict(kv.split("=", 1) for kv in args.set)
    clients = [int(c) for c in args.clients.split(",")]

    work = Path(tempfile.mkdtemp(prefix="metis_serve_bench_"))
    if args.tiny:
        from metis_cli.testing.tiny_bundle import write_tiny_bundle

        args.checkpoint_dir = write_tiny_bundle(work / "tiny", seed=0)
        args.decoding = {"steps": 2, "s2a_steps": "2,2", **args.decoding}
    files = {"main": work / "main.wav", "prompt": work / "prompt.wav"}
    sf.write(files["main"], speechlike(args.seconds, seed=1), 24_000)
    sf.write(files["prompt"], speechlike(min(max(args.seconds, 3.0), 10.0), seed=2), 24_000)
    args.voice = None
    if args.task == "tts":
        args.voice = work / "voices.json"
        args.voice.write_text(
            json.dumps({"bench": {"audio": str(files["prompt"]), "text": PROMPT_TEXT, "language": "en"}})
        )
    inputs = {k: p.read_bytes() for k, p in files.items()}

    only = set(args.only.split(","))
    extra = args.task == "tts" and bool(only & {"stream", "voice"})
    rows = []
    for label, max_batch in (("batched", args.max_batch), ("batch-1", 1)):
        if label not in only and not (label == "batched" and extra):
            continue
        server = Server(args, max_batch, work / f"serve-{label}.log")
        try:
            run_clients(server.url, args, inputs, 1, 1)  # warm-up (lazy front ends, allocator)
            if label == "batched" and args.task == "tts":
                if "stream" in only and args.stream_requests:
                    rows += stream_rows(server.url, args, args.stream_requests)
                if "voice" in only and args.voice_requests:
                    rows += voice_rows(server.url, args, args.voice_requests)
            for c in clients if label in only else ():
                before = batch_histogram(server.url, args.task)
                total = args.requests_at_1 if c == 1 and args.requests_at_1 else args.requests
                row = run_clients(server.url, args, inputs, c, total)
                row.update(
                    config=label, clients=c, max_batch=max_batch, ready_seconds=round(server.ready_seconds, 2)
                )
                row["batches"] = histogram_diff(before, batch_histogram(server.url, args.task))
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            server.stop()
    if args.cli_requests and "cli-loop" in only:
        row = cli_loop(args, files, args.cli_requests, work)
        row.update(config="cli-loop", clients=1, max_batch=1)
        rows.append(row)
        print(json.dumps(row), flush=True)

    print()
    print(f"task {args.task}, dtype {args.dtype}, {'tiny bundle' if args.tiny else args.checkpoint_dir}, "
          f"decoding {args.decoding or 'card defaults'}")  # fmt: skip
    print_tables(rows)
    by = {(r["config"], r["clients"]): r for r in rows}
    top = max(clients)
    if ("batched", top) in by and ("batch-1", top) in by:
        ratio = by[("batched", top)]["throughput"] / by[("batch-1", top)]["throughput"]
        print(f"\n{top} clients: batched / batch-1 throughput = {ratio:.2f}x")
        if "cli-loop" in {r["config"] for r in rows}:
            cli = next(r for r in rows if r["config"] == "cli-loop")
            ratio = by[("batched", top)]["throughput"] / cli["throughput"]
            print(f"{top} clients: batched / cli-loop throughput = {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
