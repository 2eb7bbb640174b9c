"""Where does a model draw the object it is told to move? (issue 13: "move" is the op the default model fails.)

Held-out sessions of phase 4's training world (``vincie_shapes_world_move3.json``: the training world with "move"
three times as frequent); every move turn is edited once from its
ground-truth context. The output is compared with the scene re-rendered with the moved object in each cell it could
occupy (the instructed cell, its old cell, every other free cell); the closest rendering names where the model put
it. A model that reads the direction word puts it in the instructed cell; one that only knows "move the X" picks a
free cell at random.

    python benchmarks/move_probe.py --model runs/x/pipeline --num_moves 60
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORLD_CONFIG = Path(__file__).resolve().parents[1] / "training_scripts" / "configs" / "vincie_shapes_world_move3.json"

# Far from training (0 .. 7,999,999 in the recipes) and from ShapesBench (10,000,000 + i).
PROBE_SEED = 31_000_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Pipeline folder (default: the shipped default model).")
    parser.add_argument("--num_moves", type=int, default=60, help="Move turns to probe.")
    parser.add_argument("--seed", type=int, default=PROBE_SEED, help="Seed of the first probe session.")
    parser.add_argument("--guidance_scale", type=float, default=None, help="Default: the shipped sampling.")
    parser.add_argument(
        "--num_inference_steps",
        type=int,
        default=None,
        help="Default: the shipped sampling. 1 probes the one-step prediction from pure noise (x0 at "
        "t = 1, the mean the model expects), i.e. what it knows before the noise picks a cell.",
    )
    parser.add_argument("--output", default=None, help="Optional JSON file for the counts.")
    args = parser.parse_args()
    if args.num_moves < 1 or (args.num_inference_steps is not None and args.num_inference_steps < 1):
        print("move_probe.py: --num_moves and --num_inference_steps must be >= 1", file=sys.stderr)
        return 2

    from diffusers_vincie.data.shapes.score import score_edit
    from diffusers_vincie.data.shapes.world import ShapesWorld
    from diffusers_vincie.default_model import DEFAULT_SAMPLING, load_default_pipeline
    from diffusers_vincie.evaluation.shapes_bench import ground_truth_edit
    from diffusers_vincie.utils.io import write_text_atomic

    pipe = load_default_pipeline(args.model)
    sampling = dict(DEFAULT_SAMPLING)
    if args.guidance_scale is not None:
        sampling["guidance_scale"] = args.guidance_scale
    if args.num_inference_steps is not None:
        sampling["num_inference_steps"] = args.num_inference_steps
    world = ShapesWorld(**json.loads(WORLD_CONFIG.read_text()))

    counts, successes, probed, index = Counter(), 0, 0, 0
    while probed < args.num_moves:
        session = world.sample_session(args.seed + index, num_turns=5)
        index += 1
        for turn, edit in enumerate(session.edits):
            if probed == args.num_moves:
                break
            if edit.op != "move":
                continue
            output = ground_truth_edit(pipe, session, turn, "full", sampling, seed=1000 * index + turn)
            successes += score_edit(output, session, turn).success
            before = session.states[turn]
            others = [obj for obj in before.objects if obj.id != edit.before.id]
            free = {(r, c) for r in range(world.grid) for c in range(world.grid)} - {(o.row, o.col) for o in others}
            errors = {}
            for row, col in free:
                moved = replace(edit.before, row=row, col=col)
                rendering = world.render(replace(before, objects=tuple(others) + (moved,)))
                errors[row, col] = float(np.abs(rendering.astype(float) - output.astype(float)).mean())
            cell = min(errors, key=errors.get)
            place = (
                "instructed"
                if cell == (edit.after.row, edit.after.col)
                else "stayed"
                if cell == (edit.before.row, edit.before.col)
                else "elsewhere"
            )
            counts[place] += 1
            probed += 1
    result = {
        "model": args.model or "default",
        "moves": probed,
        "success": successes / probed,
        "sampling": sampling,
        **{k: counts[k] for k in ("instructed", "stayed", "elsewhere")},
    }
    print(json.dumps(result))
    if args.output:
        write_text_atomic(args.output, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
