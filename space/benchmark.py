"""Overhead of the Space: seconds per turn through `gradio_client` vs the same session on the pipeline directly.

    OMP_NUM_THREADS=1 python space/benchmark.py [--turns 3] [--sessions 3] [--steps 4] [--resolution 64]

Runs on the tiny random pipeline (``VINCIE_SPACE_TINY=1``) unless ``VINCIE_MODEL`` is set; both paths run the
same instructions, seeds and settings in the same process, so the ratio is the cost of the web layer (upload,
PNG encoding, HTTP, queue) on top of sampling.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import sys
import time
from pathlib import Path

import PIL.Image
import torch

SPACE = Path(__file__).resolve().parent
INSTRUCTIONS = ["add a red circle", "make it bigger", "move it left", "change the color to blue", "make it smaller"]


def load_app():
    spec = importlib.util.spec_from_file_location("space_app", SPACE / "app.py")
    app = importlib.util.module_from_spec(spec)
    sys.modules["space_app"] = app
    spec.loader.exec_module(app)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64)
    args = parser.parse_args()
    if not os.environ.get("VINCIE_MODEL"):
        os.environ.setdefault("VINCIE_SPACE_TINY", "1")
    from gradio_client import Client, handle_file

    app = load_app()
    model = app.load_model()
    image_path = SPACE / "examples" / "house.png"
    instructions = (INSTRUCTIONS * args.turns)[: args.turns]

    def direct() -> float:
        start = time.perf_counter()
        session = model.pipe.start_session(
            PIL.Image.open(image_path).convert("RGB"),
            resolution=args.resolution,
            generator=torch.Generator().manual_seed(0),
        )
        for instruction in instructions:
            session.edit(instruction, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0))
        return time.perf_counter() - start

    demo = app.build_demo(model)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)

    def through_api() -> float:
        start = time.perf_counter()
        client.predict(api_name="/reset")
        for k, instruction in enumerate(instructions):
            image = handle_file(str(image_path)) if k == 0 else None
            client.predict(image, instruction, args.steps, 7.5, 0, args.resolution, False, api_name="/edit")
        return time.perf_counter() - start

    direct(), through_api()  # warm-up
    direct_s = min(direct() for _ in range(args.sessions))
    api_s = min(through_api() for _ in range(args.sessions))
    demo.close()

    def per_turn(seconds: float) -> float:
        return seconds / args.turns

    print(
        f"model: {model.name}; {args.turns} turns, {args.steps} steps, resolution {args.resolution}; best of {args.sessions}"
    )
    print(f"direct session : {per_turn(direct_s):.3f} s/turn")
    print(f"gradio_client  : {per_turn(api_s):.3f} s/turn")
    print(f"ratio api/direct: {api_s / direct_s:.2f}x (overhead {per_turn(api_s - direct_s) * 1000:.0f} ms/turn)")


if __name__ == "__main__":
    main()
