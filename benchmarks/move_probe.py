"""Where does a model draw the object it is told to move? (issue 13: "move" is the op the default model fails.)

Held-out sessions of phase 4's training world (``vincie_shapes_world_move3.json``: the training world with "move"
three times as frequent); every move turn is edited once from its
ground-truth context. The output is compared with the scene re-rendered with the moved object in each cell it could
occupy (the instructed cell, its old cell, every other free cell); the closest rendering names where the model put
it. A model that reads the direction word puts it in the instructed cell; one that only knows "move the X" picks a
free cell at random.

``--given_masks`` asks whether the model uses RoE masks given with the instruction (drag and controllable editing):
``true`` gives the true current- and next-frame masks of the moved object, ``decoy`` the true current mask and a
next-frame mask that puts the object in another free cell (neither the instructed nor its old one; the instruction
is unchanged; moves without such a cell are skipped). Every mode counts the moves drawn in the decoy cell
(``at_decoy``, out of ``moves_with_decoy``), so a model that follows the next mask shows more of them with
``decoy`` than without masks; one that ignores masks shows as many. ``--undirected`` takes the direction word out
of the edited turn's instruction (``"move the red circle"``): the destination is then in the next mask alone, as
when a sequence's instructions are dropped in training (``--text_dropout_with_masks``), and a decoy no longer
contradicts the text.

    python benchmarks/move_probe.py --model runs/x/pipeline --num_moves 60
    python benchmarks/move_probe.py --model runs/x/pipeline --num_moves 60 --given_masks decoy
    python benchmarks/move_probe.py --model runs/x/pipeline --num_moves 60 --given_masks decoy --undirected
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
import PIL.Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORLD_CONFIG = Path(__file__).resolve().parents[1] / "training_scripts" / "configs" / "vincie_shapes_world_move3.json"

# Far from training (0 .. 7,999,999 in the recipes) and from ShapesBench (10,000,000 + i).
PROBE_SEED = 31_000_000
GIVEN_MASKS = ("none", "true", "decoy")


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument(
        "--given_masks",
        choices=GIVEN_MASKS,
        default="none",
        help="RoE masks given with each move: none, the true ones, or the true current mask and a next mask at a "
        "decoy cell.",
    )
    parser.add_argument(
        "--undirected",
        action="store_true",
        help='Edit with "move the <object>", the direction word left out (then only a next mask says where).',
    )
    parser.add_argument("--output", default=None, help="Optional JSON file for the counts.")
    args = parser.parse_args(argv)
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
            before = session.states[turn]
            others = [obj for obj in before.objects if obj.id != edit.before.id]
            free = {(r, c) for r in range(world.grid) for c in range(world.grid)} - {(o.row, o.col) for o in others}
            instructed, old = (edit.after.row, edit.after.col), (edit.before.row, edit.before.col)
            decoys = sorted(free - {instructed, old})
            decoy = decoys[(index + turn) % len(decoys)] if decoys else None  # a third free cell, in every mode
            if args.given_masks == "decoy" and decoy is None:
                continue
            masks = {}
            if args.given_masks != "none":
                row, col = decoy if args.given_masks == "decoy" else instructed
                next_mask = world.footprint(replace(edit.before, row=row, col=col), before.camera, world.resolution)
                masks = {"current_mask": session.source_masks[turn], "next_mask": PIL.Image.fromarray(next_mask)}
            asked = session
            if args.undirected:
                instructions = list(session.instructions)
                instructions[turn] = f"move the {edit.before.name}"
                asked = replace(session, instructions=instructions)
            output = ground_truth_edit(pipe, asked, turn, "full", sampling, seed=1000 * index + turn, masks=masks)
            successes += score_edit(output, session, turn).success
            errors = {}
            for row, col in free:
                moved = replace(edit.before, row=row, col=col)
                rendering = world.render(replace(before, objects=tuple(others) + (moved,)))
                errors[row, col] = float(np.abs(rendering.astype(float) - output.astype(float)).mean())
            cell = min(errors, key=errors.get)
            place = "instructed" if cell == instructed else "stayed" if cell == old else "elsewhere"
            counts[place] += 1
            counts["moves_with_decoy"] += decoy is not None
            counts["at_decoy"] += cell == decoy  # one of the "elsewhere" ones: the baseline of --given_masks decoy
            probed += 1
    result = {
        "model": args.model or "default",
        "moves": probed,
        "success": successes / probed,
        "sampling": sampling,
        "given_masks": args.given_masks,
        "undirected": args.undirected,
        **{k: counts[k] for k in ("instructed", "stayed", "elsewhere", "moves_with_decoy", "at_decoy")},
    }
    print(json.dumps(result))
    if args.output:
        write_text_atomic(args.output, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
