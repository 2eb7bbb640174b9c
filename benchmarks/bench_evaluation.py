"""Evaluation benchmarks: session-bench floor/ceiling and the judge client's own overhead.

1. Session bench (synthetic world, exact scoring) with the identity editor (the floor) and the ground-truth
   oracle (the ceiling), timing generation + scoring per turn.
2. Judge client overhead: MSE-Bench-sized sessions judged against a local OpenAI-compatible stub that answers
   instantly, so the time is ours (PNG/base64 encoding, HTTP, caching), with 1 and 8 concurrent sessions.

Run: ``OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/bench_evaluation.py [--sessions 50]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import PIL.Image

from diffusers_vincie.evaluation import (
    BenchmarkSession,
    JudgeClient,
    judge_benchmark,
    output_filename,
)
from diffusers_vincie.evaluation.shapes_bench import (
    IdentityEditor,
    build_bench_sessions,
    run_session_bench,
)


class _InstantJudge(BaseHTTPRequestHandler):
    reply = json.dumps(
        {"choices": [{"message": {"content": '{"reason": "ok", "prompt_following": 9, "consistency": 9}'}}]}
    ).encode()

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.reply)))
        self.end_headers()
        self.wfile.write(self.reply)


def bench_session_bench(num_sessions: int, num_turns: int, size: int) -> None:
    synthetic = build_bench_sessions(num_sessions, num_turns, seed=0, image_size=size)
    by_source = {s.frames[0].tobytes(): s for s in synthetic}

    def oracle(images, instructions, seed):
        return PIL.Image.fromarray(by_source[images[0].tobytes()].frames[len(images)])

    print(f"session bench: {num_sessions} sessions x {num_turns} turns at {size}x{size}")
    for name, editor in (("identity", IdentityEditor()), ("oracle", oracle)):
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            paths = run_session_bench(editor, folder, num_sessions, num_turns, image_size=size)
            elapsed = time.perf_counter() - start
            rows = [line.split(",") for line in paths["csv"].read_text().splitlines()[1:]]
            print(
                f"  {name:8s} success per turn {[row[1] for row in rows]}  total {elapsed:.2f} s "
                f"({1000 * elapsed / (num_sessions * num_turns):.1f} ms per generated turn, scoring included)"
            )


def bench_judge_overhead(num_sessions: int, num_turns: int, size: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _InstantJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        outputs = Path(folder) / "outputs"
        outputs.mkdir()
        sessions = []
        for i in range(num_sessions):
            sessions.append(
                BenchmarkSession(
                    str(i),
                    PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
                    [f"edit {t}" for t in range(num_turns)],
                )
            )
            for t in range(num_turns):
                image = PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
                image.save(outputs / output_filename(str(i), t, i))
        client = JudgeClient(f"http://127.0.0.1:{server.server_address[1]}/v1", "stub")
        print(
            f"judge overhead: {num_sessions} sessions x {num_turns} turns, {size}x{size} noise PNGs, instant stub server"
        )
        timings = {}
        for workers in (1, 8):
            cache = Path(folder) / f"cache-{workers}"
            start = time.perf_counter()
            judge_benchmark(client, sessions, outputs, cache, num_workers=workers, show_progress=False)
            timings[workers] = time.perf_counter() - start
            requests = num_sessions * num_turns
            print(
                f"  {workers} worker(s): {timings[workers]:.2f} s, {1000 * timings[workers] / requests:.1f} ms per request"
            )
            start = time.perf_counter()
            judge_benchmark(client, sessions, outputs, cache, num_workers=workers, show_progress=False)
            print(f"    cached rerun: {time.perf_counter() - start:.2f} s (0 requests)")
        print(f"  speed-up 8 vs 1 worker(s): {timings[1] / timings[8]:.2f}x")
        client.close()
    server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--bench-size", type=int, default=256)
    parser.add_argument("--judge-size", type=int, default=512)
    args = parser.parse_args()
    bench_session_bench(args.sessions, args.turns, args.bench_size)
    bench_judge_overhead(min(args.sessions, 20), args.turns, args.judge_size)


if __name__ == "__main__":
    main()
