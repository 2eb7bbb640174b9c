"""One pipeline used from several threads: edits of different sessions serialise on the pipeline (no shared
scheduler state is raced), and a session's edit, undo, choose and branch never interleave."""

import threading

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_vincie.testing import tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    p = tiny_pipeline(default_resolution=32)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def image():
    return PIL.Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8))


def _run_in_threads(*jobs):
    errors, threads = [], []
    for job in jobs:

        def target(job=job):
            try:
                job()
            except BaseException as error:  # reported to the test below
                errors.append(error)

        threads.append(threading.Thread(target=target))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return errors


def test_two_threads_editing_two_sessions_on_one_pipeline_give_the_sequential_results(pipe, image):
    instructions = ["add a red circle", "make it blue"]
    settings = dict(num_inference_steps=4, output_type="latent")

    def alone(instruction):
        return pipe(image, instruction, generator=torch.Generator().manual_seed(1), **settings).images

    expected = {i: alone(i) for i in instructions}
    results = {}

    def job(instruction):
        def run():
            for _ in range(3):
                results[instruction] = alone(instruction)

        return run

    errors = _run_in_threads(*(job(i) for i in instructions))
    assert not errors, errors
    for instruction in instructions:
        torch.testing.assert_close(results[instruction], expected[instruction], rtol=0, atol=0)


def test_two_threads_editing_two_sessions_keep_each_session_its_own(pipe, image):
    sessions = [pipe.start_session(image), pipe.start_session(image)]

    def job(session, instruction):
        def run():
            for k in range(3):
                session.edit(f"{instruction} {k}", num_inference_steps=3, guidance_scale=2.0)

        return run

    errors = _run_in_threads(job(sessions[0], "add"), job(sessions[1], "remove"))
    assert not errors, errors
    for session, word in zip(sessions, ["add", "remove"]):
        assert [t.instruction for t in session.turns] == [f"{word} {k}" for k in range(3)]
        assert [t.text.turn for t in session.turns] == [0, 1, 2]


def test_undo_from_another_thread_waits_for_the_running_edit(pipe, image):
    session = pipe.start_session(image)
    session.edit("first", num_inference_steps=1)
    started = threading.Event()

    def slow_callback(pipeline, step, timestep, tensors):
        started.set()
        threading.Event().wait(0.05)  # keeps the edit running while undo is called
        return tensors

    edit = threading.Thread(
        target=lambda: session.edit("second", num_inference_steps=4, callback_on_step_end=slow_callback)
    )
    edit.start()
    assert started.wait(60)
    session.undo()  # waits for the edit, then removes it
    edit.join(60)
    assert [t.instruction for t in session.turns] == ["first"]
    assert [t.text.turn for t in session.turns] == [0]
    session.edit("second again", num_inference_steps=1)
    assert [t.text.turn for t in session.turns] == [0, 1]
