"""MSE-Bench judging against a scripted fake OpenAI-compatible server on 127.0.0.1.

The server answers by (session, turn), read from the prompt, so the script does not depend on request order
(sessions are judged in parallel threads). Every script is finite: an unexpected request gets HTTP 400, which
the client does not retry, so a wrong client fails fast instead of looping.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import PIL.Image
import pytest
from datasets import Dataset, Features, Image, List, Value

from diffusers_vincie.evaluation import (
    JudgeClient,
    JudgeError,
    JudgeReplyError,
    SessionJudgement,
    TurnVerdict,
    judge_benchmark,
    load_benchmark_sessions,
    parse_judge_reply,
    summarize,
)
from diffusers_vincie.evaluation.__main__ import main

NUM_TURNS = 3


def verdict_json(pf, c):
    return json.dumps({"reason": f"pf {pf} c {c}", "prompt_following": pf, "consistency": c})


# (session, turn) -> replies in order: an int is an HTTP error status, a str is the assistant message.
SCRIPT = {
    (0, 1): [verdict_json(8, 9)],
    (0, 2): [500, verdict_json(7, 7)],  # transient server error, then success
    (0, 3): [verdict_json(9, 5)],  # fails: consistency 5
    (1, 1): [
        "The edit looks fine to me.",
        "```json\n" + verdict_json(6, 9) + "\n```",
    ],  # no JSON, then fenced; 6 fails
    (1, 2): [verdict_json(9, 9)],  # only asked when the threshold is lowered to 5
    (1, 3): [verdict_json(6, 6)],
    (2, 1): [429, "Sure! {'reason': 'ok', 'prompt_following': 10, 'consistency': 8} Hope it helps."],
    (2, 2): ['{"reason": "bad", "prompt_following": 7', verdict_json(7, 10)],  # truncated JSON, then valid
    (2, 3): [verdict_json(8, 8)],
    (3, 1): [verdict_json(3, 2)],
}


class FakeJudgeServer:
    """Threaded HTTP server that plays :data:`SCRIPT` and records every request."""

    def __init__(self, script):
        self.script = {key: list(replies) for key, replies in script.items()}
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, payload = server.answer(self.path, self.headers.get("Authorization"), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path, authorization, body):
        content = body["messages"][0]["content"]
        prompt = content[0]["text"]
        turns = [int(t) for t in re.findall(r"'turn(\d+)': 's\d+-t\d+'", prompt)]
        session = int(re.search(r"'turn1': 's(\d+)-", prompt).group(1))
        key = (session, max(turns))
        images = [part["image_url"]["url"] for part in content[1:]]
        first = PIL.Image.open(io.BytesIO(base64.b64decode(images[0].split(",", 1)[1])))
        with self.lock:
            self.requests.append(
                {
                    "key": key,
                    "path": path,
                    "auth": authorization,
                    "model": body["model"],
                    "num_images": len(images),
                    "first_size": first.size,
                    "body": body,
                }
            )
            replies = self.script.get(key)
            reply = replies.pop(0) if replies else 400
        if isinstance(reply, int):
            return reply, {"error": {"message": f"scripted {reply} for {key}"}}
        return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}

    def keys(self):
        return [request["key"] for request in self.requests]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    fake = FakeJudgeServer(SCRIPT)
    yield fake
    fake.close()


@pytest.fixture
def mse_fixture(tmp_path):
    """Four sessions of three turns (source 32x24, outputs 16x12) and their generated outputs on disk."""
    features = Features({"image": Image(), "index": Value("int64"), "context": List(Value("string"))})
    dataset = Dataset.from_dict(
        {
            "image": [PIL.Image.new("RGB", (32, 24), (i, 0, 0)) for i in range(4)],
            "index": list(range(4)),
            "context": [[f"s{i}-t{t + 1}" for t in range(NUM_TURNS)] for i in range(4)],
        },
        features=features,
    )
    dataset.to_parquet(str(tmp_path / "bench.parquet"))
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    for i in range(4):
        for t in range(NUM_TURNS):
            PIL.Image.new("RGB", (16, 12), (i, t, 7)).save(outputs / f"{i}_turn{t}_rep0_seed{i}.png")
    return tmp_path / "bench.parquet", outputs


def hand_summary(threshold_6=True):
    """The expected table, computed by hand from SCRIPT (N = 4, unjudged turns count 0)."""
    n = 4
    return [
        # turn 1: s0 (8, 9) ok, s1 (6, 9) fail, s2 (10, 8) ok, s3 (3, 2) fail
        (
            2 / n,
            (8 + 6 + 10 + 3) / n,
            (9 + 9 + 8 + 2) / n,
            (math.sqrt(72) + math.sqrt(54) + math.sqrt(80) + math.sqrt(6)) / n,
        ),
        # turn 2: s0 (7, 7) ok, s2 (7, 10) ok
        (2 / n, (7 + 7) / n, (7 + 10) / n, (7 + math.sqrt(70)) / n),
        # turn 3: s0 (9, 5) fail, s2 (8, 8) ok
        (1 / n, (9 + 8) / n, (5 + 8) / n, (math.sqrt(45) + 8) / n),
    ]


def run_cli(bench, outputs, report_dir, server, *extra):
    return main(
        [
            "judge",
            "--dataset",
            str(bench),
            "--outputs",
            str(outputs),
            "--report-dir",
            str(report_dir),
            "--base-url",
            server.base_url,
            "--model",
            "fake-judge",
            "--api-key-env",
            "FAKE_JUDGE_KEY",
            "--backoff-seconds",
            "0",
            "--max-retries",
            "2",
            "--max-attempts",
            "3",
            "--num-workers",
            "3",
            *extra,
        ]
    )


# -----------------------------------------------------------------------------------------------------
# End to end through the CLI
# -----------------------------------------------------------------------------------------------------


def test_judge_matches_hand_computation_retries_and_cache(mse_fixture, server, tmp_path, monkeypatch):
    bench, outputs = mse_fixture
    monkeypatch.setenv("FAKE_JUDGE_KEY", "test-key")
    report_dir = tmp_path / "report"
    assert run_cli(bench, outputs, report_dir, server) == 0

    # Stop at the first failure: s1 and s3 are judged at turn 1 only; retried replies are asked again.
    assert sorted(server.keys()) == sorted(
        [(0, 1), (0, 2), (0, 2), (0, 3), (1, 1), (1, 1), (2, 1), (2, 1), (2, 2), (2, 2), (2, 3), (3, 1)]
    )
    for request in server.requests:
        assert request["path"] == "/v1/chat/completions"
        assert request["auth"] == "Bearer test-key" and request["model"] == "fake-judge"
        assert request["num_images"] == request["key"][1] + 1  # [source, out_1..out_K]
        assert request["first_size"] == (16, 12)  # the source is resized to the turn-1 output
        assert all(
            part["image_url"]["url"].startswith("data:image/png;base64,")
            for part in request["body"]["messages"][0]["content"][1:]
        )

    rows = list(csv_rows(report_dir / "mse_bench.csv"))
    assert rows[0] == ["Turn", "Success Rate", "Prompt Following", "Consistency", "Overall"]
    for row, expected in zip(rows[1:], hand_summary()):
        assert [float(value) for value in row[1:]] == pytest.approx(expected, abs=5e-5)
    assert len(rows) == 1 + NUM_TURNS
    assert json.loads((report_dir / "mse_bench.json").read_text())["turns"][0]["success_rate"] == 0.5
    assert "| 3 | 25.0% |" in (report_dir / "mse_bench.md").read_text()
    assert PIL.Image.open(report_dir / "mse_bench_success.png").format == "PNG"
    assert sorted(p.name for p in (report_dir / "cache").iterdir()) == [f"{i}.json" for i in range(4)]

    # A rerun is served entirely from the cache.
    before = len(server.requests)
    assert run_cli(bench, outputs, report_dir, server) == 0
    assert len(server.requests) == before
    rerun = [[float(v) for v in row[1:]] for row in list(csv_rows(report_dir / "mse_bench.csv"))[1:]]
    assert rerun == [pytest.approx(expected, abs=5e-5) for expected in hand_summary()]

    # A lower threshold only asks what was never judged: s1 turns 2 and 3 (s1 turn 1 (6, 9) now passes).
    assert run_cli(bench, outputs, report_dir, server, "--threshold", "5") == 0
    assert sorted(server.keys()[before:]) == [(1, 2), (1, 3)]
    rows = [[float(v) for v in row[1:]] for row in list(csv_rows(report_dir / "mse_bench.csv"))[1:]]
    assert rows[0][0] == pytest.approx(3 / 4)  # s0, s1, s2 pass turn 1 (3, 2 still fails)
    assert rows[2][0] == pytest.approx(2 / 4)  # s1 (6, 6) and s2 (8, 8); s0 (9, 5) fails since 5 is not > 5


def csv_rows(path):
    import csv

    with open(path, newline="") as stream:
        yield from csv.reader(stream)


def test_regenerated_output_invalidates_its_cached_verdicts(mse_fixture, server, tmp_path):
    bench, outputs = mse_fixture
    sessions = load_benchmark_sessions(bench)
    client = JudgeClient(server.base_url, "fake-judge", backoff_seconds=0)
    cache = tmp_path / "cache"
    judge_benchmark(client, sessions, outputs, cache, num_workers=2, show_progress=False)
    before = len(server.requests)
    server.script[(0, 2)] = [verdict_json(9, 9)]
    server.script[(0, 3)] = [verdict_json(9, 9)]
    PIL.Image.new("RGB", (16, 12), (200, 0, 0)).save(outputs / "0_turn1_rep0_seed0.png")  # turn 2 regenerated
    results = judge_benchmark(client, sessions, outputs, cache, num_workers=2, show_progress=False)
    assert sorted(server.keys()[before:]) == [(0, 2), (0, 3)]  # turn 1 reused, turns 2-3 judged again
    assert [v.prompt_following for v in results[0].verdicts] == [8, 9, 9]
    client.close()


# -----------------------------------------------------------------------------------------------------
# Failures stay bounded and are reported
# -----------------------------------------------------------------------------------------------------


def test_persistent_errors_are_bounded_and_reported(mse_fixture, tmp_path):
    bench, outputs = mse_fixture
    sessions = load_benchmark_sessions(bench, limit=1)
    sleeps: list[float] = []

    fake = FakeJudgeServer({(0, 1): [503, 503, 503, 503]})
    try:
        client = JudgeClient(
            fake.base_url, "m", max_retries=2, backoff_seconds=0.5, max_backoff_seconds=0.75, sleep=sleeps.append
        )
        with pytest.raises(JudgeError, match="failed 3 times"):
            judge_benchmark(client, sessions, outputs, tmp_path / "c1", show_progress=False)
        assert len(fake.requests) == 3 and sleeps == [0.5, 0.75]  # exponential, capped
        client.close()
    finally:
        fake.close()

    fake = FakeJudgeServer({(0, 1): ["nope", "still {not json}", "no"]})
    try:
        client = JudgeClient(fake.base_url, "m", backoff_seconds=0, sleep=sleeps.append)
        with pytest.raises(JudgeError, match="no valid judge reply after 3 tries"):
            judge_benchmark(client, sessions, outputs, tmp_path / "c2", max_attempts=3, show_progress=False)
        assert len(fake.requests) == 3
        client.close()
    finally:
        fake.close()

    fake = FakeJudgeServer({(0, 1): [401]})
    try:
        client = JudgeClient(fake.base_url, "m", backoff_seconds=0)
        with pytest.raises(JudgeError, match="HTTP 401"):
            judge_benchmark(client, sessions, outputs, tmp_path / "c3", show_progress=False)
        assert len(fake.requests) == 1  # not retried
        client.close()
    finally:
        fake.close()


def test_missing_outputs_and_key_give_clear_errors(mse_fixture, tmp_path, monkeypatch, capsys):
    bench, outputs = mse_fixture
    (outputs / "2_turn1_rep0_seed2.png").unlink()
    client = JudgeClient("http://127.0.0.1:9/v1", "m", max_retries=0)
    with pytest.raises(FileNotFoundError, match="run `generate` first"):
        judge_benchmark(client, load_benchmark_sessions(bench), outputs, tmp_path / "cache", show_progress=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert (
        main(["judge", "--dataset", str(bench), "--outputs", str(outputs), "--base-url", "https://api.openai.com/v1"])
        == 2
    )
    assert "OPENAI_API_KEY" in capsys.readouterr().err
    with pytest.raises(ValueError, match="base_url"):
        JudgeClient("", "m")


# -----------------------------------------------------------------------------------------------------
# Parsing and aggregation units
# -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, expected",
    [
        ('{"reason": "r", "prompt_following": 7, "consistency": 8}', (7, 8)),
        ('```json\n{"reason": "r", "prompt_following": 9, "consistency": 3}\n```', (9, 3)),
        ("```\n{'reason': 'it\\'s fine', 'prompt_following': 10, 'consistency': 0}\n```", (10, 0)),
        ('Here you go: {"reason": "a {b}", "prompt_following": "6", "consistency": 7.5} done', (6, 7.5)),
    ],
)
def test_parse_judge_reply_accepts_fences_literals_and_noise(reply, expected):
    verdict = parse_judge_reply(reply)
    assert (verdict.prompt_following, verdict.consistency) == expected


@pytest.mark.parametrize(
    "reply",
    [
        "",
        None,
        "no json here",
        '{"reason": "r", "prompt_following": 7}',
        '{"prompt_following": 11, "consistency": 3}',
        '{"prompt_following": "high", "consistency": 3}',
        "[1, 2]",
    ],
)
def test_parse_judge_reply_rejects_invalid(reply):
    with pytest.raises(JudgeReplyError):
        parse_judge_reply(reply)


def test_summarize_ignores_verdicts_after_a_failure_and_divides_by_all_sessions():
    judgements = [
        SessionJudgement("a", [TurnVerdict(7, 7), TurnVerdict(2, 9), TurnVerdict(10, 10)]),  # 3rd is after a failure
        SessionJudgement("b", []),  # never judged: counts 0 everywhere
    ]
    turn1, turn2, turn3 = summarize(judgements, num_turns=3)
    assert (turn1.success_rate, turn1.prompt_following, turn1.overall) == (0.5, 3.5, 3.5)
    assert (turn2.success_rate, turn2.consistency, turn2.num_judged) == (0.0, 4.5, 1)
    assert (turn3.success_rate, turn3.prompt_following, turn3.num_judged) == (0.0, 0.0, 0)
    with pytest.raises(ValueError, match="judgements"):
        summarize([], num_turns=3)


def test_judge_published_results_dataset(mse_fixture, server, tmp_path, capsys):
    """`--results-dataset` exports released outputs (turn_{t}_image columns) into --outputs, then judges them."""
    bench, _ = mse_fixture
    columns = {
        f"turn_{t}_image": [PIL.Image.new("RGB", (16, 12), (i, t, 9)) for i in range(4)] for t in range(NUM_TURNS)
    }
    Dataset.from_dict(columns, features=Features({name: Image() for name in columns})).to_parquet(
        str(tmp_path / "results.parquet")
    )
    outputs = tmp_path / "published"
    assert (
        main(
            [
                "judge",
                "--dataset",
                str(bench),
                "--outputs",
                str(outputs),
                "--results-dataset",
                str(tmp_path / "results.parquet"),
                "--base-url",
                server.base_url,
                "--model",
                "fake-judge",
                "--api-key-env",
                "NO_KEY_NEEDED",
                "--backoff-seconds",
                "0",
                "--num-workers",
                "2",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in outputs.glob("*.png")) == sorted(
        f"{i}_turn{t}_rep0_seed{i}.png" for i in range(4) for t in range(NUM_TURNS)
    )
    assert PIL.Image.open(outputs / "2_turn1_rep0_seed2.png").getpixel((0, 0)) == (2, 1, 9)
    rows = list(csv_rows(outputs / "judge-fake-judge" / "mse_bench.csv"))[1:]
    for row, expected in zip(rows, hand_summary()):
        assert [float(value) for value in row[1:]] == pytest.approx(expected, abs=5e-5)
    assert (
        main(
            [
                "judge",
                "--dataset",
                str(bench),
                "--outputs",
                str(outputs),
                "--results-dataset",
                "org/results",
                "--base-url",
                server.base_url,
            ]
        )
        == 2
    )
    assert "--results-split" in capsys.readouterr().err
