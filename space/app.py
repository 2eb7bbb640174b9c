"""VINCIE Space: multi-turn in-context image editing in the browser.

Run locally with ``python space/app.py`` (http://127.0.0.1:7860). The model is chosen by `load_model`:

    VINCIE_MODEL=<folder or hub id>   a converted VINCIE-3B or VINCIE-7B checkpoint, with its own sampling defaults
    (unset)                           the package's embedded default model, when the package ships one
    VINCIE_SPACE_TINY=1 / fallback    a tiny *random* pipeline (tests; the UI says so in a banner)

and placed on the GPU by `VINCIE_SPACE_OFFLOAD` (``none``, ``model`` or ``sequential`` CPU offload; see README.md for
which hardware needs which). Every browser tab (and every `gradio_client.Client`) owns its editing session through `gr.State`: the sessions of
two users never meet. Sampling runs through a queue with a concurrency limit; uploads are validated (file type,
pixel count) and so are instructions (length) and settings (steps, seed, and a resolution bounded by the model's
patch grid), with messages that say how to fix the input.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import gradio as gr
import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the app's own modules, also when the app is loaded by its path (tests, benchmark)

from model_choice import (  # noqa: E402, F401  (the app's model choice, also reached as app.<name>)
    PHOTO_EXAMPLES,
    SHAPES_COMPOSITION_EXAMPLE,
    SHAPES_EXAMPLES,
    LoadedModel,
    load_model,
    place,
)
from serving import (  # noqa: E402
    GPU_SECONDS_MAX,
    MAX_WAIT_SECONDS,
    MAX_WAITING,
    SAMPLER_CONCURRENCY,
    EditorState,
    SamplerGate,
    claimed,
    current_canvas,
    gpu_seconds,
    history_items,
    on_gpu,
    region_canvas,
    render,
    same_source,
    write_session_zip,
)

from diffusers_vincie.pipelines.image_processing import to_rgb  # noqa: E402
from diffusers_vincie.pipelines.session import PREDICT  # noqa: E402

# =====================================================================================================
#                                            Limits
# =====================================================================================================

ALLOWED_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_PIXELS = int(os.environ.get("VINCIE_SPACE_MAX_PIXELS", "16000000"))  # 16 MP: a 4000 x 4000 photo
MAX_UPLOAD_SIZE = os.environ.get("VINCIE_SPACE_MAX_FILE_SIZE", "25mb")
MAX_INSTRUCTION_CHARS = 400
MAX_REFERENCES = 6  # official multi-concept recipe: six reference images
QUEUE_SIZE = int(os.environ.get("VINCIE_SPACE_QUEUE_SIZE", "256"))  # events pass it at once; the gate bounds the work
# Bounds on one call's work, so one user's call keeps the others waiting for a bounded time: sampler steps, and
# tokens per frame (`model_choice.MAX_FRAME_TOKENS`).
MAX_STEPS = int(os.environ.get("VINCIE_SPACE_MAX_STEPS", "50"))
MAX_CALL_SECONDS = float(os.environ.get("VINCIE_SPACE_MAX_CALL_SECONDS", "120"))  # one call's hold on the sampler
MAX_SEED = 2**32 - 1
MAX_STORY_TURNS = 8


# =====================================================================================================
#                                         Input validation
# =====================================================================================================


def open_user_image(path: str, name: Optional[str] = None) -> PIL.Image.Image:
    """Opens an uploaded image as RGB, with friendly errors for wrong file types and too many pixels.

    Args:
        path: the uploaded file on the server (inside Gradio's upload cache).
        name: the name the user gave the file (its suffix is the declared type).
    """
    shown = Path(name or path).name
    if Path(shown).suffix.lower() not in ALLOWED_SUFFIXES:
        raise gr.Error(f"'{shown}' is not a supported image file: upload a PNG, JPEG, WebP or BMP image.")
    try:
        with PIL.Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise gr.Error(too_many_pixels(shown, width, height))
            return to_rgb(PIL.ImageOps.exif_transpose(image), shown)  # the package's one image rule
    except gr.Error:
        raise
    except ValueError as error:  # a mode the rule refuses (e.g. 32-bit values below zero)
        raise gr.Error(f"'{shown}': {error}") from None
    except PIL.Image.DecompressionBombError:
        raise gr.Error(too_many_pixels(shown, None, None)) from None
    except (PIL.UnidentifiedImageError, OSError, SyntaxError):
        raise gr.Error(f"'{shown}' could not be read as an image: upload a PNG, JPEG, WebP or BMP image.") from None


def too_many_pixels(name: str, width: Optional[int], height: Optional[int]) -> str:
    size = f" is {width} x {height} pixels ({width * height / 1e6:.1f} MP)" if width else " is far too large"
    return f"'{name}'{size}; the limit is {MAX_PIXELS / 1e6:.0f} MP. Downscale the image and upload it again."


def check_instruction(text: Optional[str], what: str = "instruction") -> str:
    text = (text or "").strip()
    if not text:
        raise gr.Error(f"Type an {what} first, e.g. 'add a red hat to the cat'.")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise gr.Error(f"The {what} has {len(text)} characters; keep it under {MAX_INSTRUCTION_CHARS}.")
    return text


def check_settings(model: LoadedModel, steps, seed, resolution=None) -> tuple[int, int, Optional[int]]:
    """Sampler settings as ints, each checked against its bound (API clients can send any number)."""
    checked = []
    for name, value, low, high in (
        ("Steps", steps, 1, MAX_STEPS),
        ("Seed", seed, 0, MAX_SEED),
        ("Resolution", resolution, model.pipe.size_multiple, model.max_resolution),
    ):
        if value is None and name == "Resolution":
            checked.append(None)
            continue
        number = float(value) if isinstance(value, (int, float)) else float("nan")
        if not (low <= number <= high and number == int(number)):
            raise gr.Error(f"{name} must be a whole number from {low} to {high}; got {value}. Pick one in that range.")
        checked.append(int(number))
    return tuple(checked)


def call_deadline() -> Callable:
    """A sampler step callback that stops the call once it has run `MAX_CALL_SECONDS`: with one sampling call at a
    time, this bounds how long one user's call keeps everyone else waiting. A stopped edit leaves the session as
    it was (a turn is added only when its image is done)."""
    stop = time.monotonic() + MAX_CALL_SECONDS

    def check(pipe, step, timestep, tensors: dict) -> dict:
        if time.monotonic() > stop:
            raise gr.Error(
                f"This call ran past the limit of {MAX_CALL_SECONDS:.0f} s per call (other users are waiting) and was "
                "stopped; use fewer steps, a lower resolution, or restore an earlier turn."
            )
        return tensors

    return check


def drawn_mask(region: Optional[dict], size: tuple[int, int]) -> Optional[PIL.Image.Image]:
    """The region the user painted in the editor (any opaque stroke), as a mask of the session's source size
    ``size``; None when nothing is painted."""
    painted = np.zeros((size[1], size[0]), dtype=bool)
    for layer in (region or {}).get("layers") or ():
        if layer.width * layer.height > MAX_PIXELS:
            raise gr.Error(too_many_pixels("the drawn region", layer.width, layer.height))
        alpha = layer.convert("RGBA").getchannel("A").resize(size, PIL.Image.NEAREST)
        painted |= np.asarray(alpha) > 0
    return PIL.Image.fromarray(painted.astype(np.uint8) * 255) if painted.any() else None


def named_bounds(component):
    """``component`` (a Slider or Number) whose out-of-range error names it: Gradio checks the bounds of API input
    itself, but its message ("Value 1e+30 is greater than maximum value ...") does not say which field."""
    default_preprocess = component.preprocess

    def preprocess(payload):
        try:
            return default_preprocess(payload)
        except gr.Error as error:
            raise gr.Error(f"{component.label}: {error.message} Pick a value in that range.") from None

    component.preprocess = preprocess
    return component


def checked_image(**kwargs) -> gr.Image:
    """A `gr.Image` (PIL) whose uploads are validated (type, pixel count) before the app sees them.

    Its ``preprocess`` is replaced on the instance: a `gr.Image` subclass would make Gradio write a ``.pyi`` stub
    next to this file.
    """
    component = gr.Image(type="pil", **kwargs)
    default_preprocess = component.preprocess

    def preprocess(payload) -> Optional[PIL.Image.Image]:
        if payload is None or payload.path is None:  # nothing, or a data: URL (pasted from the clipboard)
            image = default_preprocess(payload)
            if image is not None and image.width * image.height > MAX_PIXELS:
                raise gr.Error(too_many_pixels("the pasted image", image.width, image.height))
            return image
        return open_user_image(payload.path, payload.orig_name)

    component.preprocess = preprocess
    return component


# =====================================================================================================
#                                              UI
# =====================================================================================================

EXAMPLES_DIR = HERE / "examples"
CSS = """
#result img, #source img, #story img, #composed img {
    width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated;
}
#history img, #masks img, #region canvas { image-rendering: pixelated; }
#history .grid-container, #masks .grid-container { --grid-cols: 6 !important; }
"""  # small outputs stay crisp; the galleries keep thumbnails small however few turns there are


def build_demo(model: LoadedModel) -> gr.Blocks:
    """The Blocks app for ``model``; its API names are edit, drag, undo, restore, switch_branch, reset, download,
    story and compose."""
    pipe = model.pipe
    pipe.set_progress_bar_config(disable=False, leave=False)
    download_dir = Path(tempfile.mkdtemp(prefix="vincie-space-"))  # one zip per browser session, overwritten

    def generator(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    def negative(text: Optional[str]) -> str:
        text = (text or "").strip()
        if len(text) > MAX_INSTRUCTION_CHARS * 4:
            raise gr.Error(
                f"The negative prompt has {len(text)} characters; keep it under {MAX_INSTRUCTION_CHARS * 4}."
            )
        return text

    def edit_seconds(image, instruction, steps, guidance, seed, resolution, chain, state, *rest, **options) -> int:
        """ZeroGPU calls this with the handler's own arguments (progress tracker included) to size the GPU slot."""
        frames = (len(state.session.turns) if state is not None else 0) + 2
        passes = (2 if guidance != 1 else 1) * (3 if chain else 1)
        return gpu_seconds(steps, frames, resolution, passes)

    def run_turn(image, instruction, steps, guidance, seed, resolution, state, negative_prompt, turn: Callable):
        """Checks the inputs, starts a session when needed, then runs ``turn(session, sampling)`` for one turn."""
        instruction = check_instruction(instruction)
        steps, seed, resolution = check_settings(model, steps, seed, resolution)
        sampling = dict(
            num_inference_steps=steps,
            guidance_scale=float(guidance),
            generator=generator(seed),
            negative_prompt=negative(negative_prompt),
            callback_on_step_end=call_deadline(),
        )
        if image is None and state is None:
            raise gr.Error("Upload an image (or pick an example) to start a session.")
        note = ""
        if state is None or (image is not None and not same_source(state.session, image)):
            note = "" if state is None else "A new source image started a new session."
            state = EditorState([pipe.start_session(image, resolution=resolution, generator=generator(seed))])
        with claimed(state):
            try:
                turn(state.session, sampling)
            except gr.Error:
                raise
            except ValueError as error:  # e.g. the model's turn table is full, or a drag off the image
                hint = " Restore an earlier turn or reset the session." if "turn table" in str(error) else ""
                raise gr.Error(f"{error}{hint}") from None
        return render(state, note)

    @on_gpu(duration=edit_seconds)
    def edit(
        image,
        instruction,
        steps,
        guidance,
        seed,
        resolution,
        chain,
        state,
        negative_prompt=None,
        region=None,
        progress=gr.Progress(track_tqdm=True),
    ):
        def turn(session, sampling):
            mask = drawn_mask(region, session.reference_size)  # controllable editing: the user's region
            session.edit(instruction, chain_of_editing=bool(chain), current_mask=mask, **sampling)

        return run_turn(image, instruction, steps, guidance, seed, resolution, state, negative_prompt, turn)

    def drag_seconds(image, instruction, steps, guidance, seed, resolution, state, *rest, **options) -> int:
        return edit_seconds(image, instruction, steps, guidance, seed, resolution, True, state)

    @on_gpu(duration=drag_seconds)
    def drag(
        image,
        instruction,
        steps,
        guidance,
        seed,
        resolution,
        state,
        negative_prompt=None,
        region=None,
        move_x=0.0,
        move_y=0.0,
        scale=1.0,
        rotate=0.0,
        progress=gr.Progress(track_tqdm=True),
    ):
        def turn(session, sampling):
            size = session.reference_size
            translate = (float(move_x) / 100 * size[0], float(move_y) / 100 * size[1])
            mask = drawn_mask(region, size)  # none drawn: the model predicts the region
            session.drag(
                instruction,
                translate,
                float(scale),
                float(rotate),
                current_mask=PREDICT if mask is None else mask,
                **sampling,
            )

        return run_turn(image, instruction, steps, guidance, seed, resolution, state, negative_prompt, turn)

    def undo(state):
        with claimed(state):
            if not state.session.turns:
                raise gr.Error("Nothing to undo: this session has no edits yet.")
            state.session.undo()
        return render(state, "Undid the last turn.")

    def restore(turn, state):
        with claimed(state):
            turn = int(turn)
            if not 0 <= turn <= len(state.session.turns):
                raise gr.Error(f"Pick a turn between 0 and {len(state.session.turns)}.")
            state.branches.append(state.session.branch(turn))
            state.active = len(state.branches) - 1
        return render(state, f"Restored turn {turn} as a new branch; the other branches are kept.")

    def switch_branch(branch, state):
        with claimed(state):
            if branch is None or not 0 <= int(branch) < len(state.branches):
                raise gr.Error(f"Pick a branch between 1 and {len(state.branches)}.")
            state.active = int(branch)
        return render(state)

    def selected_turn(event: gr.SelectData) -> int:
        return event.index

    def reset():
        return render(None, "Session cleared.")

    def new_source(image, state):
        """A new upload: paint the region on it, unless it is the source of the session being edited."""
        if image is None or (state is not None and same_source(state.session, image)):
            return gr.skip()
        return region_canvas(image)

    def download(state, request: gr.Request):
        name = f"vincie-session-{request.session_hash or 'api'}.zip" if request else "vincie-session.zip"
        with claimed(state):
            return str(write_session_zip(state.session, download_dir / name, model.name))

    def story_lines(text: Optional[str]) -> list:
        lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
        limit = min(MAX_STORY_TURNS, pipe.transformer.config.max_turns - 1)
        if not 1 <= len(lines) <= limit:
            raise gr.Error(f"Write between 1 and {limit} instructions, one per line (got {len(lines)}).")
        return [check_instruction(line) for line in lines]

    def story_seconds(image, text, steps, guidance, seed, resolution, *rest, **options) -> int:
        turns = len([line for line in (text or "").splitlines() if line.strip()])
        per_turn = [gpu_seconds(steps, k + 2, resolution, 2 if guidance != 1 else 1) for k in range(turns)]
        return int(min(GPU_SECONDS_MAX, sum(per_turn)))

    @on_gpu(duration=story_seconds)
    def story(
        image, text, steps, guidance, seed, resolution, negative_prompt=None, progress=gr.Progress(track_tqdm=True)
    ):
        lines = story_lines(text)
        steps, seed, resolution = check_settings(model, steps, seed, resolution)
        if image is None:
            raise gr.Error("Upload the story's first image.")
        deadline = call_deadline()  # for the whole story
        try:
            session = pipe.start_session(image, resolution=resolution, generator=generator(seed))
            for line in lines:  # one session: every frame sees the earlier frames and instructions
                session.edit(
                    line,
                    num_inference_steps=steps,
                    guidance_scale=float(guidance),
                    generator=generator(seed),
                    negative_prompt=negative(negative_prompt),
                    callback_on_step_end=deadline,
                )
        except gr.Error:
            raise
        except ValueError as error:  # the pipeline's own checks (e.g. text it cannot read)
            raise gr.Error(str(error)) from None
        return history_items(session)

    def compose_seconds(files, prompt, steps, guidance, seed, resolution, *rest, **options) -> int:
        return gpu_seconds(steps, len(files or ()) + 1, resolution, 2 if guidance != 1 else 1)

    @on_gpu(duration=compose_seconds)
    def compose(
        files, prompt, steps, guidance, seed, resolution, negative_prompt=None, progress=gr.Progress(track_tqdm=True)
    ):
        files = list(files or [])
        limit = min(MAX_REFERENCES, pipe.transformer.config.max_turns - 1)
        if not 2 <= len(files) <= limit:
            raise gr.Error(f"Upload between 2 and {limit} reference images (got {len(files)}).")
        steps, seed, resolution = check_settings(model, steps, seed, resolution)
        images = [open_user_image(f if isinstance(f, str) else f.name) for f in files]
        prompt = check_instruction(prompt, "description")
        if model.composition_prompts is not None:  # the model's own wording of references and scene
            try:
                prompts = model.composition_prompts(images, prompt)
            except ValueError as error:
                raise gr.Error(str(error)) from None
        else:
            if "<IMG" not in prompt:  # official recipe: "Based on <IMG0>, <IMG1>, ... Output <IMGn>: description"
                refs = ", ".join(f"<IMG{k}>" for k in range(len(images)))
                prompt = f"Based on {refs}. Output <IMG{len(images)}>: {prompt}"
            prompts = [f"<IMG{k}>: " for k in range(1, len(images))] + [prompt]
        try:
            output = pipe(
                images,
                prompts,
                use_prompt_template=model.composition_prompts is not None,
                num_inference_steps=steps,
                guidance_scale=float(guidance),
                generator=generator(seed),
                resolution=resolution,
                negative_prompt=negative(negative_prompt),
                callback_on_step_end=call_deadline(),
            )
        except gr.Error:
            raise
        except ValueError as error:  # the pipeline's own checks (e.g. text it cannot read)
            raise gr.Error(str(error)) from None
        return output.images[0]

    gate = SamplerGate(SAMPLER_CONCURRENCY, MAX_WAITING, MAX_WAIT_SECONDS)
    edit, drag, story, compose = (gate.gated(handler) for handler in (edit, drag, story, compose))

    banner = f"**Model:** {model.name}. {model.note}".strip()
    if model.is_random:
        banner = (
            f"⚠️ **This demo runs a tiny random model** ({model.note}): its outputs are noise. Set `VINCIE_MODEL` to a "
            "converted VINCIE checkpoint (folder or Hub id), or run with the package's default model."
        )

    with gr.Blocks(title="VINCIE: multi-turn image editing") as demo:
        gr.Markdown(
            "# VINCIE · in-context multi-turn image editing\n"
            "Each edit sees the source, every earlier result and every earlier instruction. Click a turn in the "
            "history to restore it (a new branch: nothing is lost).\n\n" + banner
        )
        state = gr.State(None)
        with gr.Tab("Edit"):
            with gr.Row():
                with gr.Column():
                    image = checked_image(
                        label="Source image", sources=["upload", "clipboard"], height=300, elem_id="source"
                    )
                    instruction = gr.Textbox(
                        label="Instruction",
                        placeholder=f"e.g. {model.examples[0][1]}",
                        max_length=MAX_INSTRUCTION_CHARS,
                        elem_id="instruction",
                    )
                    gr.Examples(
                        [[str(EXAMPLES_DIR / name), text] for name, text in model.examples],
                        inputs=[image, instruction],
                        label="Examples",
                    )
                    chain = gr.Checkbox(
                        False,
                        label="Chain of editing: predict the regions to edit first (shown below)",
                        elem_id="chain",
                    )
                    with gr.Row():
                        edit_button = gr.Button("Edit", variant="primary", elem_id="edit")
                        undo_button = gr.Button("Undo", elem_id="undo")
                        reset_button = gr.Button("Reset", elem_id="reset")
                    with gr.Accordion("Advanced settings", open=False, elem_id="advanced"):
                        steps = named_bounds(
                            gr.Slider(1, MAX_STEPS, value=min(model.steps, MAX_STEPS), step=1, label="Steps")
                        )
                        guidance = named_bounds(
                            gr.Slider(1.0, 15.0, value=model.guidance, step=0.5, label="Guidance scale (1 = no CFG)")
                        )
                        negative_prompt = gr.Textbox(
                            pipe.config.default_negative_prompt,
                            label="Negative prompt (used when guidance > 1)",
                            lines=2,
                            max_length=MAX_INSTRUCTION_CHARS * 4,
                            elem_id="negative",
                        )
                        seed = named_bounds(gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed"))
                        resolution = named_bounds(
                            gr.Slider(
                                pipe.size_multiple,
                                model.max_resolution,
                                value=min(model.resolution, model.max_resolution),
                                step=pipe.size_multiple,
                                label=f"Resolution (area, applies to a new session; at most {model.max_resolution} for this model)",
                            )
                        )
                with gr.Column():
                    result = gr.Image(
                        label="Result", type="pil", interactive=False, format="png", height=420, elem_id="result"
                    )
                    status = gr.Markdown("Upload an image and type an instruction.", label="status", elem_id="status")
                    with gr.Accordion(
                        "Region: paint where to edit, or what to drag", open=False, elem_id="region-panel"
                    ):
                        gr.Markdown(
                            "*Edit* changes only the painted region (controllable editing). *Drag* moves the painted "
                            "region (or, with nothing painted, the region the model predicts) as set below and "
                            "regenerates the image."
                        )
                        region = gr.ImageEditor(
                            type="pil",
                            sources=(),
                            transforms=(),
                            layers=False,
                            format="png",
                            height=300,
                            brush=gr.Brush(colors=["#ff3366"], color_mode="fixed", default_size=24),
                            label="Paint on the image the next edit changes (nothing painted: the whole image)",
                            elem_id="region",
                        )
                        with gr.Row():
                            move_x = named_bounds(
                                gr.Slider(
                                    -100, 100, value=0, step=1, label="Move right (% of the width)", elem_id="move-x"
                                )
                            )
                            move_y = named_bounds(
                                gr.Slider(
                                    -100, 100, value=0, step=1, label="Move down (% of the height)", elem_id="move-y"
                                )
                            )
                        with gr.Row():
                            drag_scale = named_bounds(gr.Slider(0.25, 4.0, value=1.0, step=0.05, label="Scale"))
                            drag_rotate = named_bounds(
                                gr.Slider(-180, 180, value=0, step=5, label="Rotate (degrees, counter-clockwise)")
                            )
                        drag_button = gr.Button("Drag", elem_id="drag")
            history = gr.Gallery(
                label="Session history (click a turn, then restore it)",
                columns=8,
                height=200,
                object_fit="contain",
                allow_preview=False,
                format="png",
                elem_id="history",
            )
            with gr.Row():
                turn = gr.Number(0, precision=0, minimum=0, label="Turn", elem_id="turn")
                restore_button = gr.Button("Restore this turn (new branch)", elem_id="restore")
                branch = gr.Dropdown(choices=[], label="Branch", interactive=True)
                download_button = gr.Button("Download session (.zip)")
            with gr.Row():
                masks = gr.Gallery(
                    label="Regions (current, next) per turn: predicted or painted",
                    columns=6,
                    height=160,
                    object_fit="contain",
                    format="png",
                    elem_id="masks",
                    scale=3,
                )
                session_zip = gr.File(label="Session zip", interactive=False, height=160, scale=1)

        with gr.Tab("Story", elem_id="story-tab"):
            gr.Markdown(
                f"A first image and up to {min(MAX_STORY_TURNS, pipe.transformer.config.max_turns - 1)} instructions, one "
                "per line: each frame is generated from the previous frames and instructions (one session). Steps, "
                "guidance, seed, negative prompt and resolution come from the Edit tab's advanced settings."
            )
            with gr.Row():
                story_image = checked_image(
                    label="First image", sources=["upload", "clipboard"], height=260, elem_id="story-source"
                )
                story_text = gr.Textbox(
                    label="Instructions, one per line",
                    lines=6,
                    max_length=(MAX_INSTRUCTION_CHARS + 1) * MAX_STORY_TURNS,
                    elem_id="story-text",
                    placeholder="the camera pans left\na bird lands on the fence",
                )
            story_button = gr.Button("Tell the story", variant="primary", elem_id="story-run")
            story_gallery = gr.Gallery(
                label="Story",
                columns=8,
                height=220,
                object_fit="contain",
                allow_preview=False,
                format="png",
                elem_id="story",
            )

        with gr.Tab("Multi-concept", elem_id="compose-tab"):
            gr.Markdown(
                (
                    "Upload 2 or 3 reference images, one object of the shapes world each, and say where each goes, "
                    "in the order of the references: `the yellow square at the bottom right and the purple circle "
                    "at the top left`."
                    if model.composition_prompts is not None
                    else "Upload 2 to 6 reference images and describe the picture to compose. Refer to them as "
                    "`<IMG0>`, `<IMG1>`, ... (a plain description is wrapped as `Based on <IMG0>, <IMG1>. Output "
                    "<IMG2>: ...`)."
                )
                + " Steps, guidance, seed, negative prompt and resolution come from the Edit tab's advanced settings."
            )
            with gr.Row():
                references = gr.File(
                    label="Reference images",
                    file_count="multiple",
                    file_types=list(ALLOWED_SUFFIXES),
                    type="filepath",
                    elem_id="references",
                )
                composed = gr.Image(
                    label="Composition", type="pil", interactive=False, format="png", height=320, elem_id="composed"
                )
            compose_prompt = gr.Textbox(
                label="Description",
                placeholder=model.compose_example[1]
                if model.compose_example
                else "Based on <IMG0>, <IMG1>. Output <IMG2>: the cat wearing the hat",
                max_length=MAX_INSTRUCTION_CHARS,
                elem_id="compose-prompt",
            )
            if model.compose_example:
                files, text = model.compose_example
                gr.Examples([[[str(EXAMPLES_DIR / name) for name in files], text]], [references, compose_prompt])
            compose_button = gr.Button("Compose", variant="primary", elem_id="compose")

        views = [state, result, history, masks, branch, turn, status]
        settings = [steps, guidance, seed, resolution]
        edit_inputs = [image, instruction, *settings, chain, state, negative_prompt, region]
        drag_inputs = [
            image,
            instruction,
            *settings,
            state,
            negative_prompt,
            region,
            move_x,
            move_y,
            drag_scale,
            drag_rotate,
        ]
        # Samplers pass the gate (one runs, a few wait a bounded time, the others hear "busy" at once), so Gradio's
        # queue never holds them; the handlers that do not call the model skip the queue and never wait for them.
        sampling = dict(concurrency_limit=None)
        quick = dict(queue=False)
        # The region editor is refreshed by a follow-up event of its own: an ImageEditor that is both an input and
        # an output of one event stops updating in the browser (Gradio 6).
        repaint = dict(fn=current_canvas, inputs=[state], outputs=[region], api_visibility="private", **quick)
        edit_button.click(edit, edit_inputs, views, api_name="edit", **sampling).success(**repaint)
        instruction.submit(edit, edit_inputs, views, api_visibility="private", **sampling).success(**repaint)
        drag_button.click(drag, drag_inputs, views, api_name="drag", **sampling).success(**repaint)
        undo_button.click(undo, [state], views, api_name="undo", **quick).success(**repaint)
        restore_button.click(restore, [turn, state], views, api_name="restore", **quick).success(**repaint)
        branch.input(switch_branch, [branch, state], views, api_name="switch_branch", **quick).success(**repaint)
        reset_button.click(reset, None, views, api_name="reset", **quick).success(**repaint)
        download_button.click(download, [state], [session_zip], api_name="download", **quick)
        history.select(selected_turn, None, [turn], api_visibility="private", **quick)
        image.change(new_source, [image, state], [region], api_visibility="private", **quick)
        story_button.click(
            story, [story_image, story_text, *settings, negative_prompt], [story_gallery], api_name="story", **sampling
        )
        compose_button.click(
            compose,
            [references, compose_prompt, *settings, negative_prompt],
            [composed],
            api_name="compose",
            **sampling,
        )
    demo.queue(max_size=QUEUE_SIZE)  # only the samplers are queued, and the gate answers them without delay
    return demo


def main() -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = build_demo(load_model())
    demo.launch(max_file_size=MAX_UPLOAD_SIZE, css=CSS)


if __name__ == "__main__":
    main()
