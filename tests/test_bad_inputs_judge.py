"""Bounded inputs from the judge endpoint: a reply over the size cap is refused without being read whole, a
redirect is refused with a message that says so, a damaged cache is ignored with a warning, and a score of `true`
(or a cached `"10"`) is never taken for a number."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import PIL.Image
import pytest

from diffusers_vincie.evaluation import JudgeClient, JudgeError, judge_session, parse_judge_reply
from diffusers_vincie.evaluation.__main__ import main
from diffusers_vincie.evaluation.judge import JudgeReplyError
from diffusers_vincie.evaluation.sessions import BenchmarkSession

VERDICT = {"choices": [{"message": {"content": '{"reason": "ok", "prompt_following": 8, "consistency": 9}'}}]}


def _client(handler, **kwargs) -> JudgeClient:
    client = JudgeClient("http://judge.test/v1", "m", max_retries=0, sleep=lambda seconds: None, **kwargs)
    client._http = httpx.Client(transport=httpx.MockTransport(handler), follow_redirects=False)
    return client


def test_a_huge_reply_is_refused_after_the_cap_without_reading_the_rest():
    pulled = []

    def body():
        for _ in range(400):  # 400 MiB if read to the end
            pulled.append(1)
            yield b" " * (1 << 20)

    client = _client(lambda request: httpx.Response(200, content=body()), max_reply_bytes=4 << 20)
    with pytest.raises(JudgeError, match="over the cap of 4194304 bytes"):
        client.complete("judge this", [])
    assert len(pulled) <= 6


def test_a_reply_announcing_a_huge_length_is_refused_before_its_body():
    pulled = []

    def body():
        pulled.append(1)
        yield b"{}"

    headers = {"Content-Length": str(400 << 20)}
    client = _client(lambda request: httpx.Response(200, headers=headers, content=body()), max_reply_bytes=1 << 20)
    with pytest.raises(JudgeError, match="announces 419430400 bytes"):
        client.complete("judge this", [])
    assert pulled == []


def test_a_reply_under_the_cap_still_works():
    reply = json.dumps(VERDICT).encode()
    client = _client(lambda request: httpx.Response(200, content=iter([reply])), max_reply_bytes=1 << 20)
    assert parse_judge_reply(client.complete("judge this", [])).consistency == 9


class RedirectingServer:
    """Answers every POST with a 307 to ``location`` (127.0.0.1 only, stops with the test)."""

    def __init__(self, location: str):
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                outer.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(307)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_redirect_is_refused_with_a_message_that_says_so(tmp_path, capsys):
    from test_bad_inputs_evaluation import _bench, _brighter

    from diffusers_vincie.evaluation import generate_outputs

    server = RedirectingServer("http://elsewhere.invalid/v1/chat/completions")
    try:
        client = JudgeClient(server.base_url, "m", max_retries=0)
        with pytest.raises(JudgeError, match="redirect to http://elsewhere.invalid/.*not followed"):
            client.complete("judge this", [])
        client.close()
        assert server.requests == 1

        generate_outputs(_brighter, _bench(tmp_path, num_turns=1), tmp_path / "out", show_progress=False)
        argv = ["judge", "--dataset", str(tmp_path / "bench.parquet"), "--outputs", str(tmp_path / "out")]
        assert main([*argv, "--base-url", server.base_url, "--max-retries", "0"]) == 1
        err = capsys.readouterr().err
        line = err.strip().splitlines()[-1]
        assert "Traceback" not in err and line.startswith("python -m diffusers_vincie.evaluation judge:"), err
        assert "redirect to http://elsewhere.invalid" in line and "--base-url" in line
    finally:
        server.close()


@pytest.mark.parametrize("value", ["true", "false", "null", "[8]"])
def test_a_score_that_is_not_a_number_is_an_invalid_reply(value):
    with pytest.raises(JudgeReplyError, match="prompt_following"):
        parse_judge_reply(f'{{"prompt_following": {value}, "consistency": 8}}')


# ----------------------------------------------------------------------------------------------------- the cache


class CountingClient:
    model = "m"

    def __init__(self):
        self.calls = 0

    def complete(self, prompt, image_urls):
        self.calls += 1
        return VERDICT["choices"][0]["message"]["content"]

    def backoff(self, attempt):
        pass


@pytest.fixture
def judged(tmp_path):
    session = BenchmarkSession(index="0", source=PIL.Image.new("RGB", (8, 8)), instructions=["a"])
    output = tmp_path / "0_turn0_rep0_seed0.png"
    PIL.Image.new("RGB", (8, 8), (9, 9, 9)).save(output)
    cache = tmp_path / "cache" / "0.json"
    client = CountingClient()
    judge_session(client, session, [output], cache_path=cache)
    assert client.calls == 1
    return client, session, output, cache


@pytest.mark.parametrize(
    "damage",
    ["torn", "a list", "turns a list", "score true", 'score "10"', "score 11"],
)
def test_a_damaged_judge_cache_is_ignored_with_a_warning_and_rewritten(judged, caplog, damage):
    client, session, output, cache = judged
    record = json.loads(cache.read_text())
    entry = record["turns"]["1"]
    if damage == "torn":
        cache.write_text(cache.read_text()[:30])
    elif damage == "a list":
        cache.write_text("[1, 2]")
    elif damage == "turns a list":
        cache.write_text(json.dumps({**record, "turns": [entry]}))
    else:
        entry["prompt_following"] = {"score true": True, 'score "10"': "10", "score 11": 11}[damage]
        cache.write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="diffusers_vincie.evaluation.judge"):
        judgement = judge_session(client, session, [output], cache_path=cache)
    assert client.calls == 2 and judgement.verdicts[0].prompt_following == 8  # judged again, not read as a score
    if damage in ("torn", "a list", "turns a list"):
        assert "ignoring the unreadable judge cache" in caplog.text and str(cache) in caplog.text
    assert json.loads(cache.read_text())["turns"]["1"]["prompt_following"] == 8
    judge_session(client, session, [output], cache_path=cache)
    assert client.calls == 2  # the rewritten cache is used
