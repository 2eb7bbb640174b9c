"""The Space under more users than it can serve: sampling calls beyond the ones running and a few waiting are told
"busy" at once, a waiting call gives up after a bounded time, and the quick handlers (undo, download, ...) answer
while the sampler is busy. A small load on 127.0.0.1, bounded in time."""

from __future__ import annotations

import sys
import threading
import time

import pytest
from conftest import load_script
from test_space import HOUSE, SPACE, free_port

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def app():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VINCIE_SPACE_TINY", "1")
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        yield sys.modules.get("space_app") or load_script(SPACE / "app.py", "space_app", register=True)


def _in_threads(count: int, job) -> list:
    results = [None] * count

    def run(k):
        try:
            results[k] = ("ok", job(k))
        except Exception as error:  # the outcome the test inspects
            results[k] = ("error", error)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not any(t.is_alive() for t in threads), "a request never ended"
    return results


def test_the_gate_answers_busy_at_once_when_full_and_after_a_bounded_wait(app):
    import gradio as gr

    gate = app.SamplerGate(slots=1, max_waiting=1, max_wait_seconds=0.5)
    running, release = threading.Event(), threading.Event()

    def hold():
        with gate.admitted():
            running.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert running.wait(10)
    waited = {}

    def wait_then_busy():
        start = time.monotonic()
        try:
            with gate.admitted():
                waited["outcome"] = "ran"
        except gr.Error as error:
            waited["outcome"], waited["seconds"] = error.message, time.monotonic() - start

    waiter = threading.Thread(target=wait_then_busy)
    waiter.start()
    while gate.waiting == 0:
        time.sleep(0.01)
    start = time.monotonic()
    with pytest.raises(gr.Error, match="The Space is busy"):
        with gate.admitted():
            pass
    assert time.monotonic() - start < 0.2  # no wait when the waiting room is full
    waiter.join(10)
    assert "busy" in waited["outcome"] and 0.4 < waited["seconds"] < 5
    release.set()
    holder.join(10)
    with gate.admitted():  # free again
        assert gate.waiting == 0


def test_overload_ends_every_request_with_a_result_or_busy_and_quick_handlers_answer(app, monkeypatch):
    from gradio_client import Client, handle_file

    monkeypatch.setattr(app, "MAX_WAITING", 1)
    monkeypatch.setattr(app, "MAX_WAIT_SECONDS", 1.0)
    model = app.load_model()
    demo = app.build_demo(model)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        clients = [Client(url, verbose=False) for _ in range(7)]  # the last one undoes
        image = handle_file(str(HOUSE))
        sampling, ended = threading.Event(), {}

        def edit(k):
            sampling.set()
            try:
                return clients[k].predict(image, "add a red circle", 20, 7.5, k, 64, False, api_name="/edit")
            finally:
                ended[k] = time.monotonic()

        def undo():
            assert sampling.wait(30)
            time.sleep(0.5)  # the edits are in flight
            with pytest.raises(Exception, match="no session yet|Nothing to undo"):
                clients[-1].predict(api_name="/undo")
            ended["undo"] = time.monotonic()

        undo_thread = threading.Thread(target=undo)
        undo_thread.start()
        results = _in_threads(len(clients) - 1, edit)
        undo_thread.join(60)
    finally:
        demo.close()
    outcomes = ["ok" if kind == "ok" else str(value) for kind, value in results]
    busy = [o for o in outcomes if "The Space is busy" in o]
    assert len(busy) + outcomes.count("ok") == len(outcomes), outcomes  # a result or "busy", nothing else
    assert busy and outcomes.count("ok") >= 1
    edits_ended = sorted(ended[k] for k in range(len(results)))
    assert ended["undo"] < edits_ended[-1], "undo waited for every edit to end"  # it skipped the sampler's queue
