"""MSE-Bench judging with any OpenAI-compatible vision-language model (the official protocol, our wording).

Protocol (official ``evaluation/compute_score.py``): for turn ``K = 1..n`` of a session the
judge sees the instructions ``1..K`` (as the Python string form of ``{'turn1': ..., 'turnK': ...}``) and the
images ``[source, out_1, ..., out_K]`` (the source resized to the size of ``out_1``), and answers a JSON object
``{"reason", "prompt_following", "consistency"}`` with integer scores 0-10 about the *last* turn. A turn
succeeds when both scores are strictly greater than the threshold (default 6); judging a session stops at its
first failed turn.

Transport: the Chat Completions API (``POST {base_url}/chat/completions``) with the images as base64 PNG data
URLs, through ``httpx``. Transient HTTP failures (429, 5xx, timeouts, connection errors) are retried with
exponential backoff; a reply that cannot be parsed is asked again, also with backoff; both are bounded. Every
judged turn is written to a per-session JSON cache (with the hash of the judged image), so a rerun, or a run
with another threshold, only pays for the turns it has never seen.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import PIL.Image
from tqdm.auto import tqdm

from ..utils.cli import UsageError, check_number
from ..utils.io import check_plain_name, resolve_inside, write_json_atomic
from .generate import read_output
from .sessions import BenchmarkSession, output_path, session_seed

__all__ = [
    "DEFAULT_JUDGE_MODEL",
    "DEFAULT_SUCCESS_THRESHOLD",
    "JudgeClient",
    "JudgeError",
    "JudgeReplyError",
    "SessionJudgement",
    "TurnVerdict",
    "build_judge_prompt",
    "judge_benchmark",
    "judge_session",
    "parse_judge_reply",
]

logger = logging.getLogger(__name__)

DEFAULT_JUDGE_MODEL = "gpt-5-nano"  # the official default (`--api_model`)
DEFAULT_SUCCESS_THRESHOLD = 6.0  # success iff both scores > 6
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
DEFAULT_MAX_REPLY_BYTES = 16 << 20  # a verdict is a few hundred bytes; this leaves room for verbose servers


class JudgeError(RuntimeError):
    """The judge endpoint failed for good (non-retryable status, or retries exhausted)."""


class JudgeReplyError(ValueError):
    """The judge answered something that is not a valid verdict."""


# =====================================================================================================
# Verdicts
# =====================================================================================================


@dataclass
class TurnVerdict:
    """The judge's answer for one turn."""

    prompt_following: float
    consistency: float
    reason: str = ""

    def success(self, threshold: float = DEFAULT_SUCCESS_THRESHOLD) -> bool:
        return self.prompt_following > threshold and self.consistency > threshold


@dataclass
class SessionJudgement:
    """Verdicts of one session's judged turns, in order, ending at the first failure (if any)."""

    index: str
    verdicts: list[TurnVerdict]


# =====================================================================================================
# Prompt and parsing
# =====================================================================================================


def build_judge_prompt(instructions: Sequence[str]) -> str:
    """The judge prompt for the last of ``instructions`` (our wording, the official structure and output)."""
    num_prompts = len(instructions)
    prompts = {f"turn{k + 1}": text for k, text in enumerate(instructions)}
    return (
        "You are an expert judge of multi-turn image editing. A user edits an image over several turns: the "
        "first turn applies an instruction to a source image, and every later turn applies a new instruction "
        "to the result of the previous turn.\n"
        f"Judge only how well the LAST turn (turn {num_prompts}) was carried out; earlier instructions and "
        "images are context.\n\n"
        f"You receive {num_prompts} instructions and {num_prompts + 1} images. The first image is the source; "
        f"image k+1 is the result of turn k.\n"
        f"The instructions are: {prompts}\n\n"
        "First explain your judgement in one short reason, then give two integer scores from 0 to 10:\n"
        "- prompt_following: does the last image do what the last instruction asks? 0 = not at all, "
        "10 = perfectly.\n"
        "- consistency: are the parts that the last instruction does not touch unchanged with respect to the "
        "previous image (the source for turn 1)? 0 = a completely different image (heavy over-editing), "
        "10 = a minimal yet effective edit.\n\n"
        'Answer with a JSON object only: {"reason": "...", "prompt_following": int, "consistency": int}'
    )


_FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)```", re.DOTALL)


def parse_judge_reply(text: Any) -> TurnVerdict:
    """Parse a judge reply: code fences are stripped, JSON or a Python dict literal accepted.

    Raises:
        JudgeReplyError: the reply holds no object with numeric ``prompt_following`` and ``consistency`` in
            ``[0, 10]``.
    """
    if not isinstance(text, str) or not text.strip():
        raise JudgeReplyError(f"empty judge reply: {text!r}")
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        raise JudgeReplyError(f"no JSON object in judge reply: {text[:200]!r}")
    candidate = body[start : end + 1]
    parsed: Any = None
    for loader in (json.loads, ast.literal_eval):
        try:
            parsed = loader(candidate)
            break
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    if not isinstance(parsed, dict):
        raise JudgeReplyError(f"judge reply is not a JSON object: {text[:200]!r}")
    scores = {key: _score(parsed, key, text) for key in ("prompt_following", "consistency")}
    return TurnVerdict(reason=str(parsed.get("reason", "")), **scores)


def _score(parsed: dict[str, Any], key: str, text: str, numbers_only: bool = False) -> float:
    """A score in [0, 10]: a JSON number, or (``numbers_only=False``, a model's reply) a numeric string; ``true``
    is never one (it would count as 1)."""
    value = parsed.get(key)
    allowed = (int, float) if numbers_only else (int, float, str)
    try:
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise JudgeReplyError(f"judge reply has no numeric {key!r} (got {value!r:.40}): {text[:200]!r}") from None
    if not 0.0 <= number <= 10.0:
        raise JudgeReplyError(f"judge reply {key!r}={number} is outside [0, 10]")
    return int(number) if number.is_integer() else number


# =====================================================================================================
# Client
# =====================================================================================================


class JudgeClient:
    """Minimal OpenAI-compatible Chat Completions client with bounded retries and exponential backoff.

    Args:
        base_url: API root, e.g. ``https://api.openai.com/v1`` or ``http://localhost:8000/v1`` (vLLM, SGLang,
            Ollama, LiteLLM, ...).
        model: Model name sent in every request.
        api_key: Bearer token (omitted when ``None``, e.g. for a local server).
        timeout: Total deadline of one HTTP request in seconds, from connecting to the last byte of the reply
            (httpx's own timeouts bound each read, so a server trickling bytes could hold a request forever).
        max_retries: Retries of one request after a transient failure (so ``max_retries + 1`` tries at most).
        backoff_seconds: First backoff; doubles at every retry, capped by ``max_backoff_seconds``.
        extra_body: Extra fields of every request (``temperature``, ``max_tokens``, ``reasoning_effort``...).
        sleep: Sleep function (tests pass a recorder).
        max_reply_bytes: A reply body larger than this is refused (:class:`JudgeError`) as soon as its headers or
            its first bytes past the cap arrive; it is never held in memory whole.

    Redirects are not followed (they would send the API key and the images elsewhere): a 3xx answer is a
    :class:`JudgeError` naming the target, to be given as ``base_url`` if it is the right one.
    """

    def __init__(
        self,
        base_url: str,
        model: str = DEFAULT_JUDGE_MODEL,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff_seconds: float = 2.0,
        max_backoff_seconds: float = 60.0,
        extra_body: dict[str, Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ):
        import httpx

        if not base_url:
            raise ValueError(
                "`base_url` is empty: pass --base-url or set OPENAI_BASE_URL (e.g. https://api.openai.com/v1)."
            )
        if max_retries < 0:
            raise ValueError(f"`max_retries` must be >= 0, got {max_retries}.")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"`timeout` must be a number of seconds > 0, got {timeout}.")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.extra_body = dict(extra_body or {})
        self.sleep = sleep
        self.timeout = timeout
        self.max_reply_bytes = max_reply_bytes
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout, headers=headers, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def backoff(self, attempt: int) -> None:
        """Sleep before retry number ``attempt`` (0-based)."""
        self.sleep(min(self.max_backoff_seconds, self.backoff_seconds * 2**attempt))

    def post(self, body: dict[str, Any]) -> Any:
        """POSTs ``body`` and returns the whole response, or raises ``httpx.TimeoutException`` once ``timeout``
        seconds have passed since the call, whatever the server does.

        The request runs on a daemon thread that reads the reply chunk by chunk and gives up at the first chunk
        after the deadline; the caller stops waiting at the deadline itself.
        """
        import httpx

        deadline = time.monotonic() + self.timeout
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                with self._http.stream("POST", self.url, json=body) as response:
                    chunks, size = [], 0
                    announced = response.headers.get("Content-Length", "")
                    if announced.isdigit() and int(announced) > self.max_reply_bytes:
                        raise self._too_large(f"announces {announced} bytes")
                    for chunk in response.iter_raw():  # raw: the Response built below decodes it once
                        if time.monotonic() > deadline:
                            return
                        size += len(chunk)
                        if size > self.max_reply_bytes:  # stop reading: the rest is never downloaded
                            raise self._too_large(f"sent more than {self.max_reply_bytes} bytes")
                        chunks.append(chunk)
                    outcome["response"] = httpx.Response(
                        response.status_code,
                        headers=response.headers,
                        content=b"".join(chunks),
                        request=response.request,
                    )
            except Exception as error:  # handed to the caller's thread
                outcome["error"] = error

        worker = threading.Thread(target=run, name="judge-request", daemon=True)
        worker.start()
        worker.join(max(0.0, deadline - time.monotonic()))
        if "error" in outcome:
            raise outcome["error"]
        if "response" not in outcome:
            raise httpx.TimeoutException(f"no complete reply within --timeout {self.timeout:g}s")
        return outcome["response"]

    def _too_large(self, what: str) -> JudgeError:
        return JudgeError(
            f"judge endpoint {self.url} reply {what}, over the cap of {self.max_reply_bytes} bytes; refused (a "
            "verdict is a few hundred bytes: check --base-url)."
        )

    def complete(self, prompt: str, image_urls: Sequence[str]) -> str:
        """Send one user message (text, then images) and return the text of the first choice."""
        import httpx

        content = [{"type": "text", "text": prompt}]
        content += [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
        body = {"model": self.model, "messages": [{"role": "user", "content": content}], **self.extra_body}
        failure = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.backoff(attempt - 1)
            try:
                response = self.post(body)
            except httpx.TransportError as error:  # connection refused, timeouts, resets
                failure = f"{type(error).__name__}: {error}"
                logger.warning("judge request failed (%s), try %d/%d", failure, attempt + 1, self.max_retries + 1)
                continue
            if response.status_code in RETRYABLE_STATUS:
                failure = f"HTTP {response.status_code}: {response.text[:200]}"
                logger.warning("judge request failed (%s), try %d/%d", failure, attempt + 1, self.max_retries + 1)
                continue
            if 300 <= response.status_code < 400:
                raise JudgeError(
                    f"judge endpoint {self.url} answered HTTP {response.status_code}, a redirect to "
                    f"{response.headers.get('Location', '(no Location)')}; redirects are not followed (the API key "
                    "and images would go to another address): pass the final URL as --base-url if it is the right one."
                )
            if response.status_code >= 400:
                raise JudgeError(
                    f"judge endpoint {self.url} answered HTTP {response.status_code}: {response.text[:500]} "
                    "(check --base-url, --model and the API key)"
                )
            return _reply_text(response)
        raise JudgeError(f"judge endpoint {self.url} failed {self.max_retries + 1} times; last error: {failure}")


def _reply_text(response: Any) -> str:
    """Text of the first choice; anything unexpected becomes a :class:`JudgeReplyError` (asked again)."""
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise JudgeReplyError(f"unexpected chat completion body: {response.text[:200]!r}") from error
    if isinstance(content, list):  # some servers return content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


# =====================================================================================================
# Judging sessions
# =====================================================================================================


def image_data_url(image: PIL.Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _judge_turn(
    client: JudgeClient, instructions: Sequence[str], image_urls: Sequence[str], max_attempts: int
) -> TurnVerdict:
    """Ask until the reply parses (``max_attempts`` replies at most, backoff in between)."""
    last_error: Exception | None = None
    for attempt in range(max_attempts):
        if attempt:
            client.backoff(attempt - 1)
        try:
            return parse_judge_reply(client.complete(build_judge_prompt(instructions), image_urls))
        except JudgeReplyError as error:
            last_error = error
            logger.warning("unusable judge reply (%s), try %d/%d", error, attempt + 1, max_attempts)
    raise JudgeError(f"no valid judge reply after {max_attempts} tries; last: {last_error}")


def _read_cache(path: Path, model: str) -> dict[str, Any]:
    """The cached turns of a session; a cache that cannot be read (torn, edited, not ours) is ignored with a
    warning: its turns are judged again and the file rewritten."""
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text())
        turns = record.get("turns", {}) if record.get("judge_model") == model else {}
        if not isinstance(turns, dict) or not all(k.isdigit() and isinstance(e, dict) for k, e in turns.items()):
            raise ValueError("`turns` is not an object of numbered turn records")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as error:
        logger.warning("ignoring the unreadable judge cache %s (%s); its turns are judged again", path, error)
        return {}
    return turns


def _cached_verdict(entry: dict[str, Any] | None, digest: str) -> TurnVerdict | None:
    """The verdict of a cache entry made for the output of SHA-256 ``digest``, or ``None`` (judge again) when the
    entry is for another output or holds scores that are not JSON numbers in [0, 10] (the cache writes numbers:
    ``true`` or ``"10"`` there is an edited file)."""
    if entry is None or entry.get("output_sha256") != digest:
        return None
    try:
        scores = {
            key: _score(entry, key, "cache entry", numbers_only=True) for key in ("prompt_following", "consistency")
        }
    except JudgeReplyError:
        return None
    return TurnVerdict(reason=str(entry.get("reason", "")), **scores)


def judge_session(
    client: JudgeClient,
    session: BenchmarkSession,
    output_files: Sequence[Path],
    threshold: float = DEFAULT_SUCCESS_THRESHOLD,
    cache_path: Path | None = None,
    max_attempts: int = 5,
) -> SessionJudgement:
    """Judge one session turn by turn, stopping at its first failed turn.

    Args:
        client: The judge client.
        session: The session (source image and instructions).
        output_files: The generated PNG of each turn to judge, in order.
        threshold: A turn succeeds iff both scores are strictly greater.
        cache_path: Per-session JSON cache; cached turns whose image hash matches are not asked again.
        max_attempts: Replies asked per turn before giving up on an unparsable judge.
    """
    missing = [str(path) for path in output_files if not path.exists()]
    if missing:
        raise FileNotFoundError(f"session {session.index}: missing outputs {missing}; run `generate` first.")
    unreadable = [str(path) for path in output_files if read_output(path) is None]
    if unreadable:
        raise UsageError(
            f"session {session.index}: unreadable outputs {unreadable} (truncated or not images); "
            "run `generate` again, it regenerates them."
        )
    output_bytes = [path.read_bytes() for path in output_files]
    urls: list[str] = []  # built on the first turn that is not cached

    def image_urls(count: int) -> list[str]:
        if not urls:
            with PIL.Image.open(output_files[0]) as first:
                urls.append(image_data_url(session.source.resize(first.size, PIL.Image.BICUBIC)))
            urls.extend("data:image/png;base64," + base64.b64encode(data).decode("ascii") for data in output_bytes)
        return urls[:count]

    turns: dict[str, Any] = _read_cache(cache_path, client.model) if cache_path else {}
    verdicts: list[TurnVerdict] = []
    for turn in range(len(output_files)):
        key, digest = str(turn + 1), hashlib.sha256(output_bytes[turn]).hexdigest()
        verdict = _cached_verdict(turns.get(key), digest)
        if verdict is None:
            for stale in [k for k in turns if int(k) >= turn + 1]:  # this output changed: later verdicts too
                del turns[stale]
            verdict = _judge_turn(client, session.instructions[: turn + 1], image_urls(turn + 2), max_attempts)
            turns[key] = {"output_sha256": digest, **asdict(verdict)}
            if cache_path:
                write_json_atomic(cache_path, {"index": session.index, "judge_model": client.model, "turns": turns})
        verdicts.append(verdict)
        if not verdict.success(threshold):
            break
    return SessionJudgement(session.index, verdicts)


def judge_benchmark(
    client: JudgeClient,
    sessions: Sequence[BenchmarkSession],
    outputs_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    threshold: float = DEFAULT_SUCCESS_THRESHOLD,
    seed_offset: int = 0,
    max_turns: int | None = None,
    num_workers: int = 8,
    max_attempts: int = 5,
    show_progress: bool = True,
) -> list[SessionJudgement]:
    """Judge every session of a benchmark in parallel threads (results in session order).

    Args:
        client: The judge client.
        sessions: The benchmark sessions.
        outputs_dir: Folder of the ``generate`` outputs.
        cache_dir: Folder of the per-session JSON caches (``{index}.json``).
        threshold: Success threshold (strict).
        seed_offset: The ``--seed-offset`` used by ``generate`` (for the file names).
        max_turns: Judge at most this many turns per session.
        num_workers: Concurrent sessions.
        max_attempts: Replies asked per turn before giving up.
        show_progress: Show a tqdm bar.

    Raises:
        JudgeError: some sessions could not be judged; the others are cached, rerun to resume.
        UsageError: ``threshold`` is not a number in [0, 10] (``nan`` would fail every turn silently).
    """
    check_number("threshold", threshold, 0, 10)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)

    def run(position: int) -> SessionJudgement:
        session = sessions[position]
        seed = session_seed(session.index, position, seed_offset)
        num_turns = session.num_turns if max_turns is None else min(max_turns, session.num_turns)
        files = [output_path(outputs_dir, session.index, turn, seed) for turn in range(num_turns)]
        cache_path = resolve_inside(cache_dir, f"{check_plain_name(session.index, 'session index')}.json", "cache")
        return judge_session(client, session, files, threshold, cache_path, max_attempts)

    results: list[SessionJudgement | None] = [None] * len(sessions)
    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        futures = {pool.submit(run, position): position for position in range(len(sessions))}
        for future in tqdm(as_completed(futures), total=len(futures), desc="judge", disable=not show_progress):
            try:
                results[futures[future]] = future.result()
            except JudgeError as error:
                failures.append(f"position {futures[future]}: {error}")
    if failures:
        raise JudgeError(f"{len(failures)} session(s) could not be judged (rerun to resume):\n" + "\n".join(failures))
    return [result for result in results if result is not None]
