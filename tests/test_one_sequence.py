"""One sequence for training and inference: the same session gives the same model inputs and velocity through the
training path and the pipeline path; offloading is exact; the package's import graph runs one way."""

import ast
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_vincie.pipelines.sampling import frame_velocity
from diffusers_vincie.pipelines.session import SessionFrame, SessionText
from diffusers_vincie.sequence import Frame, Text, format_turn_prompt, session_items, session_text
from diffusers_vincie.testing import tiny_pipeline
from diffusers_vincie.training import SequenceConfig, VincieTrainingModule, plan_sequence
from diffusers_vincie.training.flow import add_noise
from diffusers_vincie.training.sequences import assemble_block_causal, collate_samples

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "diffusers_vincie"
INSTRUCTIONS = ["add a red circle", "make it bigger", "move it left"]


def _latents(items, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {item: torch.rand(16, 16, 3, generator=g) * 2 - 1 for item in items if isinstance(item, Frame)}


@pytest.mark.parametrize(
    "with_masks, mode, text_rope_mode",
    [
        (False, "slots", "diagonal"),
        (True, "slots", "diagonal"),
        (False, "compact", "diagonal"),
        (True, "slots", "per_turn"),
        (False, "compact", "per_turn"),
    ],
)
def test_training_and_pipeline_give_the_same_inputs_and_velocity_for_every_target(with_masks, mode, text_rope_mode):
    pipe = tiny_pipeline(
        pixel_space=True, attention_layout="block_causal", frame_index_mode=mode, text_rope_mode=text_rope_mode
    )
    transformer = pipe.transformer
    turns = len(INSTRUCTIONS)
    config = SequenceConfig(
        layout="block_causal",
        min_turns=turns,
        max_turns=turns,
        mask_probability=float(with_masks),
        drop_current_frame=0.0,
        drop_current_mask=0.0,
        drop_next_mask=0.0,
        frame_index=mode,
        task_weights={"next_image": 1.0, "current_mask": float(with_masks), "next_mask": float(with_masks)},
    )
    plan = plan_sequence(turns, True, config, np.random.default_rng(0))
    assert plan.with_masks == with_masks and plan.items == session_items(turns, with_masks)
    latents = _latents(plan.items)
    prompts = [format_turn_prompt(text, k) for k, text in enumerate(INSTRUCTIONS)]
    segments = pipe.encode_text(prompts)
    g = torch.Generator().manual_seed(1)
    t = torch.rand(len(plan.targets), generator=g) * 0.9 + 0.05
    noise = torch.randn(len(plan.targets), 16, 16, 3, generator=g)

    # training: one multi-target forward over the whole window
    sample = assemble_block_causal(plan, latents, segments, t, noise, config.task_weights, mode)
    batch = collate_samples([sample])
    with torch.no_grad():
        trained = VincieTrainingModule(transformer, "block_causal")(batch).split(16 * 16)
    num_context = len(plan.context)

    # inference: the pipeline's velocity of each target from its cached context
    checked = 0
    for j, target in enumerate(plan.targets):
        items = plan.items[: plan.order(target)]
        frames = [SessionFrame(f, latents[f], PIL.Image.new("RGB", (16, 16))) for f in items if isinstance(f, Frame)]
        texts = [SessionText(x, prompts[x.turn], segments[x.turn]) for x in items if isinstance(x, Text)]
        text = session_text([s.tokens for s in texts], [s.turn for s in texts])
        velocity, shape = frame_velocity(
            transformer, items, torch.stack([f.latent for f in frames]), text, None, target, mode
        )
        assert shape == (1, 16, 16, 3)
        # same model inputs: the frame's RoPE index and its text
        assert int(velocity.branches[0][2]) == int(sample.frame_index[num_context + j])
        visible = sum(len(s.tokens) + 1 for s in texts)
        assert torch.equal(batch.inputs.encoder_hidden_states[:visible], text.states)
        x_t = add_noise(latents[target][None], noise[j : j + 1], t[j])
        with torch.no_grad():
            predicted = velocity(x_t, t[j] * 1000.0).velocity
        error = (predicted.flatten(0, 2) - trained[num_context + j]).abs().max().item()
        assert error <= 1e-5, f"target {target}: |dv| = {error:.2e}"
        checked += 1
    assert checked == len(plan.targets) >= (9 if with_masks else 3)


@pytest.mark.parametrize("offload_type", ["leaf_level", "block_level"])
def test_group_offload_to_disk_gives_the_same_images(offload_type, tmp_path):
    image = PIL.Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8))
    kwargs = dict(
        num_inference_steps=2,
        resolution=32,
        output_type="latent",
        posterior="mode",
        generator=torch.Generator().manual_seed(0),
    )
    plain = tiny_pipeline()
    plain.set_progress_bar_config(disable=True)
    reference = plain(image, ["add a red circle", "make it bigger"], **kwargs).images
    offloaded = tiny_pipeline()
    offloaded.set_progress_bar_config(disable=True)
    group = dict(num_blocks_per_group=1) if offload_type == "block_level" else {}
    offloaded.transformer.enable_group_offload(
        torch.device("cpu"), offload_type=offload_type, offload_to_disk_path=str(tmp_path), **group
    )
    kwargs["generator"] = torch.Generator().manual_seed(0)
    out = offloaded(image, ["add a red circle", "make it bigger"], **kwargs).images
    assert any(tmp_path.iterdir())  # the weights really went to disk
    for a, b in zip(out, reference):
        assert (a - b).abs().max().item() <= 1e-5


def _package_imports() -> dict[str, set[str]]:
    """Every module of the package -> the package modules it imports (top level or inside functions)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                candidates = [module] + [f"{module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            targets |= {c for c in candidates if c.startswith("diffusers_vincie")}
        graph[name] = targets
    return {name: {t for t in targets if t in graph and t != name} for name, targets in graph.items()}


def test_no_import_cycle_and_no_module_over_800_lines():
    graph = _package_imports()
    # the model is self-contained: it builds on its own attention module only
    assert graph["diffusers_vincie.models.transformer_vincie"] == {"diffusers_vincie.models.attention_vincie"}
    assert graph["diffusers_vincie.models.attention_vincie"] == set()
    assert "diffusers_vincie.pipelines.pipeline_vincie" not in graph["diffusers_vincie.pipelines.session"]

    def is_package_init(name):
        return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").is_file()

    # a module importing its own package's __init__ (re-exports) is not a cycle of modules; leave packages out
    modules = {n: {t for t in ts if not is_package_init(t)} for n, ts in graph.items() if not is_package_init(n)}
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in modules.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [node, nxt]))
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for name in modules:
        if name not in state:
            visit(name, [])
    long = {p.name: n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 800}
    assert not long, f"modules over 800 lines: {long}"
