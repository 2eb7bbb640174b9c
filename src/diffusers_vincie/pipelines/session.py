"""VincieEditingSession: an editing session with history, undo, branching and save/load.

The session holds the encoded items of one sequence (`diffusers_vincie.sequence`: ``Frame`` / ``Text``) and runs
each edit through its pipeline's stages (``encode_prompt`` -> ``prepare_latents`` -> ``denoise`` -> ``decode``).
It knows the pipeline only through those methods: this module imports no pipeline, the pipeline imports it.

Work already done is never redone: each instruction is text-encoded once and each image VAE-encoded once per
session (outputs keep their generated latent in the default ``fidelity="exact"``; with
``fidelity="official"`` an output is decoded to uint8, resized and re-encoded once, like the official loop,
which however re-encodes every context image again at each turn with an unseeded posterior). Block-causal models also encode the context once per turn and reuse its
keys/values at every sampling step.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import PIL.Image
import torch
from safetensors.torch import load_file, save_file

from ..sequence import CURRENT_MASK, IMAGE, NEXT_MASK, Frame, Text, format_turn_prompt
from ..utils.io import UnsafePathError, atomic_directory, merge_directory, resolve_inside, temporary_sibling
from .image_processing import (
    area_size,
    check_drag,
    mask_to_image,
    postprocess,
    postprocess_official,
    preprocess,
    preprocess_mask,
    to_rgb,
    transform_mask,
)
from .inputs import (
    FIDELITIES,
    POSTERIORS,
    check_choice,
    check_embeddings,
    check_flag,
    check_generator,
    check_image,
    check_int,
    check_sampling,
    check_text,
)
from .locking import lock_of, serialised
from .sampling import Guidance, consensus_index

SESSION_FILE = "session.json"
TENSORS_FILE = "session.safetensors"
SESSION_VERSION = 2  # 2: each saved image carries its sha256, checked against its latent's entry on load
SAFE_NAME = re.compile(r"[A-Za-z0-9_]+")
# The files a saved session owns in its folder (a re-save replaces or deletes only these).
OWN_FILE = re.compile(rf"{re.escape(SESSION_FILE)}|{re.escape(TENSORS_FILE)}|(source_\d+|turn_\d+(_mask_\d+)?)\.png")
PREDICT = "predict"


@dataclass
class SessionFrame:
    """An encoded frame of the session: its item, latent (``(h, w, C)``, scaled) and image.

    ``pixels`` keeps the decoded ``(3, H, W)`` output in [-1, 1] of a generated frame, so no frame is decoded twice.
    """

    item: Frame
    latent: torch.Tensor
    image: PIL.Image.Image
    pixels: Optional[torch.Tensor] = None

    @property
    def kind(self) -> str:
        return self.item.kind


@dataclass
class SessionText:
    """An encoded instruction: its item, formatted prompt and encoder tokens ``(n, text_dim)``."""

    item: Text
    prompt: str
    tokens: torch.Tensor

    @property
    def turn(self) -> int:
        return self.item.turn


@dataclass
class SessionTurn:
    """One edit: the instruction, its encoded text, the optional RoE mask frames and the output frame.

    ``candidates`` holds every output of the turn (``num_images_per_prompt``); ``frame`` is the one the session
    continues from (the first, or the one picked with `VincieEditingSession.choose`).
    """

    instruction: Optional[str]
    text: SessionText
    frame: SessionFrame
    mask_frames: list = field(default_factory=list)
    candidates: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.candidates:
            self.candidates = [self.frame]

    @property
    def image(self) -> PIL.Image.Image:
        return self.frame.image

    @property
    def latent(self) -> torch.Tensor:
        return self.frame.latent

    @property
    def masks(self) -> Optional[tuple]:
        return tuple(f.image for f in self.mask_frames) if self.mask_frames else None


class VincieEditingSession:
    """Created by ``pipe.start_session(image)``.

    Args:
        pipe: the pipeline.
        images: the source image, or several reference images (composition; add their prompts with
            `add_instruction` before the first `edit`).
        resolution: area resolution (official 256).
        generator: generator for posterior samples of the source images.
        posterior: "sample" (official) or "mode".
        use_prompt_template: official "Based on <IMGk>, ... Output <IMGk+1>: " template.
        camera_prefix: prefix of every instruction (paper D.4).
        max_sequence_length: tokens per prompt including the end token.
    """

    def __init__(
        self,
        pipe: "VincieInContextPipeline",  # noqa: F821 (the pipeline imports this module, not the other way)
        images: list,
        resolution: int = 256,
        generator: Union[torch.Generator, list, None] = None,
        posterior: str = "sample",
        use_prompt_template: bool = True,
        camera_prefix: str = "",
        max_sequence_length: int = 150,
    ):
        if not images or any(im is None for im in images):
            raise ValueError("A session needs a source image: `image` is missing.")
        for i, image in enumerate(images):
            check_image("image" if len(images) == 1 else f"image[{i}]", image)
        check_int(
            "resolution",
            resolution,
            pipe.size_multiple,
            pipe.config.max_resolution,
            hint=f" (this model's native resolution is {pipe.config.default_resolution})",
        )
        check_choice("posterior", posterior, POSTERIORS)
        check_flag("use_prompt_template", use_prompt_template)
        check_text("camera_prefix", camera_prefix)
        check_int("max_sequence_length", max_sequence_length, 2, hint=" (at least one token and the end token)")
        generator = check_generator(generator, len(generator) if isinstance(generator, (list, tuple)) else 1)[0]
        self.pipe = pipe
        self.resolution, self.posterior = resolution, posterior
        self.use_prompt_template, self.camera_prefix = use_prompt_template, camera_prefix
        self.max_sequence_length = max_sequence_length
        self.encode_calls = {"text": 0, "image": 0}  # encoder calls made by this session (see benchmarks)
        first = to_rgb(images[0])
        self.reference_size = first.size
        with lock_of(pipe):
            self.sources = [
                self._encode_image(im, Frame(IMAGE, i), generator) for i, im in enumerate([first, *images[1:]])
            ]
        self.reference_texts: list[SessionText] = []
        self.turns: list[SessionTurn] = []
        self._text_cache: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------- state

    @property
    def items(self) -> list:
        """Session items in order: ``I_0, [P_0, I_1, ...,] then per turn T_k, [masks], I_{k+1}``."""
        items = [self.sources[0]]
        for text, source in zip(self.reference_texts, self.sources[1:]):
            items += [text, source]
        for turn in self.turns:
            items += [turn.text, *turn.mask_frames, turn.frame]
        return items

    @property
    def history(self) -> list[tuple[Optional[str], PIL.Image.Image]]:
        """``[(None, source), (instruction_1, image_1), ...]``."""
        return [(None, self.sources[0].image)] + [(t.instruction, t.image) for t in self.turns]

    @property
    def images(self) -> list[PIL.Image.Image]:
        return [t.image for t in self.turns]

    def _next_turn_index(self) -> int:
        return len(self.reference_texts) + len(self.turns)

    def _encode_image(self, image, item: Frame, generator=None) -> SessionFrame:
        rgb = to_rgb(image, "image" if item.kind == IMAGE else "mask")
        to_pixels = preprocess if item.kind == IMAGE else preprocess_mask
        pixels = to_pixels(rgb, self.resolution, self.pipe.size_multiple, self.reference_size)
        self.encode_calls["image"] += 1
        return SessionFrame(item, self.pipe.encode_image(pixels, generator, self.posterior), rgb)

    def _text(self, instruction: Optional[str], turn: int, templated: bool, embeds=None) -> SessionText:
        if embeds is not None:  # encoded apart (`pipe.encode_prompt`); the prompt text is unknown here
            check_embeddings("prompt_embeds", embeds, self.pipe.transformer.config.text_embed_dim)
            return SessionText(Text(turn), instruction or "", embeds.to(self.pipe._execution_device))
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("`instruction` must be a non-empty string (or give `prompt_embeds`).")
        check_text("instruction", instruction)
        prompt = (
            format_turn_prompt(instruction, turn, self.camera_prefix)
            if templated
            else self.camera_prefix + instruction
        )
        return SessionText(Text(turn), prompt, self._encoded(prompt))

    def _encoded(self, prompt: str) -> torch.Tensor:
        if prompt not in self._text_cache:
            self._text_cache[prompt] = self.pipe.encode_text([prompt], self.max_sequence_length)[0]
            self.encode_calls["text"] += 1
        return self._text_cache[prompt]

    def _negative(
        self, negative_prompt: Optional[str], negative_embeds, guidance_scale: float
    ) -> Optional[torch.Tensor]:
        if guidance_scale == 1.0:
            return None
        if negative_embeds is not None:
            return negative_embeds.to(self.pipe._execution_device)
        return self._encoded(self.pipe.config.default_negative_prompt if negative_prompt is None else negative_prompt)

    # ------------------------------------------------------------------------------------- editing

    @serialised("pipe")
    def add_instruction(self, prompt: Optional[str], prompt_embeds: Optional[torch.Tensor] = None) -> None:
        """Adds the instruction that follows a given image other than the last (earlier turns given as images, as
        in the official loop, or reference prompts of composition mode with ``use_prompt_template=False``)."""
        if self.turns:
            raise ValueError("Reference prompts must be added before the first edit.")
        if len(self.reference_texts) >= len(self.sources) - 1:
            raise ValueError("Every reference image already has its prompt; the next prompt is an edit.")
        turn = self._next_turn_index()
        self.reference_texts.append(self._text(prompt, turn, self.use_prompt_template, prompt_embeds))

    @serialised("pipe")  # a turn at a time, and one call at a time on the shared pipeline
    @torch.no_grad()
    def edit(
        self,
        instruction: Optional[str] = None,
        negative_prompt: Optional[str] = None,
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        generator: Union[torch.Generator, list, None] = None,
        latents: Optional[torch.Tensor] = None,
        fidelity: str = "exact",
        chain_of_editing: bool = False,
        current_mask=None,
        next_mask: Union[None, str, PIL.Image.Image, Callable] = None,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: tuple = ("latents",),
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        num_images_per_prompt: int = 1,
        guidance_interval: float = 1.0,
        guidance_rescale: float = 0.0,
        consensus_samples: Optional[int] = None,
    ) -> Union[PIL.Image.Image, list]:
        """Runs one turn and returns its image (a list of ``num_images_per_prompt`` candidates when > 1).

        Args:
            instruction: the edit (or ``prompt_embeds``: its embedding from ``pipe.encode_prompt``, templated for
                this turn).
            chain_of_editing: predict the current-frame RoE mask, then the next-frame mask, then the image.
            current_mask: a user mask (RGB/L image or 2-D array, source size) of the region to edit in the current
                image (controllable editing), or "predict".
            next_mask: the region in the next image: an image, "predict", or a callable mapping the current mask
                image to it (drag editing, see `drag`).
            num_images_per_prompt: candidates of this turn (one generator each, or one shared); the session
                continues from the first unless `choose` picks another.
            consensus_samples: samples drawn for each candidate image, of which the one closest to the others is
                kept (`consensus_index`; default the pipeline's ``default_consensus_samples``). ``latents`` start
                the first sample; mask frames are sampled once.
            Other arguments as in the pipeline's ``__call__`` (defaults: the pipeline's configured ones).
        """
        num_inference_steps, guidance_scale, consensus_samples, generators = check_sampling(
            self.pipe.config,
            num_inference_steps,
            guidance_scale,
            guidance_interval,
            guidance_rescale,
            num_images_per_prompt,
            consensus_samples,
            generator,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            self.pipe._callback_tensor_inputs,
        )
        check_choice("fidelity", fidelity, FIDELITIES)
        check_flag("chain_of_editing", chain_of_editing)
        if self.pipe.block_causal and fidelity == "official":
            raise ValueError(
                "`fidelity='official'` reproduces the official full-attention loop; this model is block-causal."
            )
        if len(self.reference_texts) != len(self.sources) - 1:
            raise ValueError(
                f"{len(self.sources)} reference images need {len(self.sources) - 1} reference prompts before the first "
                "edit (`add_instruction`)."
            )
        if prompt_embeds is not None and instruction is not None:
            raise ValueError("Give either `instruction` or `prompt_embeds`, not both.")
        turn = self._next_turn_index()
        if turn >= self.pipe.transformer.config.max_turns:
            raise ValueError(
                f"The session reached the model's turn table ({self.pipe.transformer.config.max_turns} turns)."
            )
        if negative_prompt is not None:
            check_text("negative_prompt", negative_prompt)
        if negative_prompt_embeds is not None:
            check_embeddings(
                "negative_prompt_embeds", negative_prompt_embeds, self.pipe.transformer.config.text_embed_dim
            )
        text = self._text(instruction, turn, self.use_prompt_template, prompt_embeds)
        negative = self._negative(negative_prompt, negative_prompt_embeds, guidance_scale)
        if fidelity == "official":  # official: every turn starts from the first turn's seed state, per candidate
            states = self.__dict__.setdefault("_official_seed_states", {})
            for k, g in enumerate(generators):
                if g is not None:
                    g.set_state(states.setdefault(k, g.get_state()))
        self.pipe._interrupt = False  # an interrupt ends only the edit (or call) in which it was raised
        sampling = dict(
            negative_tokens=negative,
            guidance=Guidance(float(guidance_scale), guidance_interval, guidance_rescale),
            num_inference_steps=num_inference_steps,
            generator=generators[0],
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        items = self.items + [text]
        mask_frames = []
        if current_mask is None and chain_of_editing:
            current_mask = PREDICT
        if next_mask is None and current_mask is not None:
            next_mask = PREDICT  # chain of editing / controllable editing: the next-frame mask is predicted
        for kind, mask in ((CURRENT_MASK, current_mask), (NEXT_MASK, next_mask)):
            if mask is None:
                continue
            if callable(mask) and not isinstance(mask, (str, PIL.Image.Image)):
                if not mask_frames:
                    raise ValueError(f"`{kind}` as a function needs a current mask to transform.")
                # the function sees the current mask at the source image's size (drag offsets are source pixels)
                mask = mask(mask_frames[-1].image.resize(self.reference_size, PIL.Image.NEAREST))
            mask_frames.append(self._mask_frame(mask, items + mask_frames, Frame(kind, text.turn), sampling))

        target = Frame(IMAGE, text.turn + 1)
        candidates = []
        for k, g in enumerate(generators):
            if k and self.pipe.interrupt:
                break
            samples = []
            for j in range(consensus_samples):
                if j and self.pipe.interrupt:
                    break
                start = latents if k == 0 and j == 0 else None
                samples.append(self._generate(items + mask_frames, target, {**sampling, "generator": g}, start))
            frame = samples[consensus_index([sample.pixels for sample in samples])]
            if fidelity == "official":  # outputs re-enter through uint8 + resize + VAE, as the official loop does
                reencoded = self._encode_image(postprocess_official(frame.pixels), target, g)
                frame = SessionFrame(target, reencoded.latent, reencoded.image, frame.pixels)
            candidates.append(frame)
        self.turns.append(SessionTurn(instruction, text, candidates[0], mask_frames, candidates))
        self.pipe.maybe_free_model_hooks()
        images = [c.image for c in candidates]
        return images if num_images_per_prompt > 1 else images[0]

    @serialised()
    def choose(self, candidate: int) -> PIL.Image.Image:
        """Continues the session from candidate ``candidate`` of the last turn (``num_images_per_prompt``)."""
        if not self.turns:
            raise ValueError("Nothing to choose: the session has no edits.")
        turn = self.turns[-1]
        check_int("candidate", candidate, 0, len(turn.candidates) - 1)
        turn.frame = turn.candidates[candidate]
        return turn.frame.image

    def _generate(self, items: list, target: Frame, sampling: dict, latents=None) -> SessionFrame:
        """Samples ``target`` after ``items`` and decodes it once."""
        latent = self.pipe.denoise(items, target, latents=latents, **sampling)
        pixels = self.pipe.decode_latent(latent)
        return SessionFrame(target, latent, postprocess(pixels, "pil"), pixels)

    def _mask_frame(self, mask, items: list, item: Frame, sampling: dict) -> SessionFrame:
        """An RoE mask frame ``item``: predicted, or encoded from the user's mask."""
        if isinstance(mask, str):
            if mask != PREDICT:
                raise ValueError(
                    f"`{item.kind}` must be an image, a 2-D array, a function or 'predict'; got {mask!r}."
                )
            return self._generate(items, item, sampling)
        image = mask_to_image(mask, self.reference_size, item.kind)
        return self._encode_image(image, item, sampling["generator"])  # seeded like the rest of the edit

    def drag(
        self,
        instruction: str,
        translate=(0.0, 0.0),
        scale: float = 1.0,
        rotate: float = 0.0,
        current_mask=PREDICT,
        **kwargs,
    ):
        """Drag editing: the current RoE mask (given or predicted) is moved/scaled/rotated into the next-frame mask,
        then the image is generated. ``translate`` is in source-image pixels.

        The transform must be finite (``scale`` > 0) and leave part of the region inside the image: with a given
        ``current_mask`` this is checked before any work, with a predicted one as soon as it is predicted."""
        translate, scale, rotate = check_drag(translate, scale, rotate)
        if current_mask is not None and not isinstance(current_mask, str) and not callable(current_mask):
            transform_mask(mask_to_image(current_mask, self.reference_size, "current_mask"), translate, scale, rotate)
        return self.edit(
            instruction,
            current_mask=current_mask,
            next_mask=lambda m: transform_mask(m, translate, scale, rotate),
            **kwargs,
        )

    @serialised()
    def undo(self) -> None:
        """Removes the last turn."""
        if not self.turns:
            raise ValueError("Nothing to undo: the session has no edits.")
        self.turns.pop()

    @serialised()
    def branch(self, turn: int) -> "VincieEditingSession":
        """A new session that keeps turns ``1..turn`` (0 = only the source); this session is unchanged."""
        check_int("turn", turn, 0, len(self.turns))
        clone = object.__new__(VincieEditingSession)
        clone.__dict__.update(self.__dict__)
        clone.turns = list(self.turns[:turn])
        clone.reference_texts = list(self.reference_texts)
        clone._text_cache = dict(self._text_cache)
        clone.encode_calls = dict(self.encode_calls)
        return clone

    # ------------------------------------------------------------------------------------- save / load

    @serialised()
    def save(self, folder: Union[str, os.PathLike], overwrite: bool = False) -> Path:
        """Writes images (PNG), tensors (safetensors) and ``session.json`` to ``folder`` atomically.

        ``folder`` must be new or hold a saved session; anything else (a folder with other files, a regular file)
        is refused unless ``overwrite=True``, which replaces it whole. Re-saving into a saved session's folder
        replaces only the session's own files (once the new ones are complete) and keeps everything else there
        (notes, renders).
        """
        folder = Path(folder)
        in_place = folder.is_dir() and (folder / SESSION_FILE).is_file() and not overwrite
        if folder.exists() and not overwrite:
            if not folder.is_dir():
                raise FileExistsError(
                    f"{folder} is a file, not a session folder; pass `overwrite=True` to replace it."
                )
            if any(folder.iterdir()) and not (folder / SESSION_FILE).is_file():
                raise FileExistsError(
                    f"{folder} holds files that are not a saved session; choose a new folder or pass `overwrite=True`."
                )
        record = {
            "version": SESSION_VERSION,
            "resolution": self.resolution,
            "posterior": self.posterior,
            "use_prompt_template": self.use_prompt_template,
            "camera_prefix": self.camera_prefix,
            "max_sequence_length": self.max_sequence_length,
            "reference_size": list(self.reference_size),
            "sources": [],
            "reference_texts": [],
            "turns": [],
        }
        tensors = {}
        staging = temporary_sibling(folder) if in_place else folder  # replaced only once the new session is whole
        with atomic_directory(staging, replace=True) as tmp:

            def frame(f: SessionFrame, name: str) -> dict:
                f.image.save(tmp / f"{name}.png")
                tensors[f"{name}.latent"] = f.latent.float().contiguous()
                return {"name": name, "kind": f.kind, "sha256": _sha256(tmp / f"{name}.png")}

            def text(t: SessionText, name: str) -> dict:
                tensors[f"{name}.tokens"] = t.tokens.float().contiguous()
                return {"name": name, "prompt": t.prompt, "turn": t.turn}

            record["sources"] = [frame(f, f"source_{i}") for i, f in enumerate(self.sources)]
            record["reference_texts"] = [text(t, f"reference_text_{i}") for i, t in enumerate(self.reference_texts)]
            for k, turn in enumerate(self.turns):
                chosen = next(j for j, c in enumerate(turn.candidates) if c is turn.frame)
                candidates = [
                    frame(c, f"turn_{k + 1}" if j == chosen else f"turn_{k + 1}_candidate_{j}")
                    for j, c in enumerate(turn.candidates)
                ]
                record["turns"].append(
                    {
                        "instruction": turn.instruction,
                        "text": text(turn.text, f"turn_{k + 1}_text"),
                        "frame": candidates[chosen],
                        "candidates": candidates,
                        "chosen": chosen,
                        "masks": [frame(m, f"turn_{k + 1}_mask_{j}") for j, m in enumerate(turn.mask_frames)],
                    }
                )
            save_file(tensors, tmp / TENSORS_FILE)
            (tmp / SESSION_FILE).write_text(json.dumps(record, indent=2))
        if in_place:  # complete in a sibling folder: move its files in, the record last, then drop stale ones
            merge_directory(staging, folder, lambda name: OWN_FILE.fullmatch(name) is not None, last=SESSION_FILE)
        return folder

    @classmethod
    def load(cls, pipe: "VincieInContextPipeline", folder: Union[str, os.PathLike]) -> "VincieEditingSession":  # noqa: F821
        """Restores a saved session (no re-encoding: latents and text tokens are stored), checking every file."""
        folder = Path(folder)
        record_path, tensors_path = folder / SESSION_FILE, folder / TENSORS_FILE
        if not record_path.is_file():
            raise FileNotFoundError(f"{folder} is not a saved session (no {SESSION_FILE}).")
        for name in (SESSION_FILE, TENSORS_FILE):  # a file that is a symlink out of the folder is never read
            resolve_inside(folder, name, "saved session file")
        try:
            record = json.loads(record_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{record_path} is not valid JSON ({error}); the saved session is damaged.") from None
        if not isinstance(record, dict) or record.get("version") not in (1, SESSION_VERSION):
            version = record.get("version") if isinstance(record, dict) else None
            raise ValueError(
                f"{record_path} has session format version {version!r}; this version of diffusers-vincie reads "
                f"versions 1 and {SESSION_VERSION}."
            )
        try:
            tensors = load_file(tensors_path)
        except Exception as error:  # safetensors reports a torn file in several ways
            raise ValueError(f"{tensors_path} cannot be read ({error}); the saved session is damaged.") from None
        device, dtype = pipe._execution_device, pipe.transformer.dtype
        latent_channels, text_dim = pipe.transformer.config.latent_channels, pipe.transformer.config.text_embed_dim

        def tensor(name: str, suffix: str, width: int) -> torch.Tensor:
            key = f"{name}.{suffix}"
            if key not in tensors or tensors[key].ndim < 2 or tensors[key].shape[-1] != width:
                raise ValueError(f"{tensors_path}: `{key}` is missing or not (..., {width}) for this pipeline.")
            return tensors[key].to(device, dtype)

        def entry_name(entry: dict) -> str:
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
                raise ValueError(f"{record_path}: entry name {name!r} is not a plain file name of the session.")
            return name

        def frame(entry: dict, turn: int) -> SessionFrame:
            name = entry_name(entry)
            path = resolve_inside(folder, f"{name}.png", f"{record_path}: image")
            if "sha256" in entry and (not path.is_file() or _sha256(path) != entry["sha256"]):
                raise ValueError(f"{path} is missing or differs from the image this session saved with its latent.")
            try:
                image = PIL.Image.open(path).convert("RGB")
            except (OSError, PIL.UnidentifiedImageError) as error:
                raise ValueError(f"{path} cannot be read as an image ({error}).") from None
            return SessionFrame(Frame(entry.get("kind"), turn), tensor(name, "latent", latent_channels), image)

        def text(entry: dict) -> SessionText:
            name = entry_name(entry)
            return SessionText(Text(int(entry["turn"])), entry["prompt"], tensor(name, "tokens", text_dim))

        session = object.__new__(cls)
        session.pipe = pipe
        for key in ("resolution", "posterior", "use_prompt_template", "camera_prefix", "max_sequence_length"):
            if key not in record:
                raise ValueError(f"{record_path} lacks `{key}`; the saved session is damaged.")
            setattr(session, key, record[key])
        try:
            _restore_items(session, record, frame, text, pipe.transformer.config.max_turns)
        except UnsafePathError:  # a file of the record leads outside the folder: said as such, never "damaged"
            raise
        except (KeyError, TypeError, IndexError, ValueError) as error:
            raise ValueError(f"{record_path}: {error}; the saved session is damaged.") from None
        frames = session.sources + [f for t in session.turns for f in t.candidates + t.mask_frames]
        shapes = {tuple(f.latent.shape) for f in frames}
        if len(shapes) != 1:
            raise ValueError(f"{tensors_path}: the session's frame latents disagree in shape ({sorted(shapes)}).")
        expected = _latent_size(pipe, session.reference_size, session.resolution)
        if next(iter(shapes))[:2] != expected:
            raise ValueError(
                f"{folder} was saved by a model whose frames are {next(iter(shapes))[:2]} latent pixels at resolution "
                f"{session.resolution}; this pipeline makes {expected} (another patch size or VAE). Load it with the "
                "model that saved it."
            )
        session._text_cache = {t.prompt: t.tokens for t in session.reference_texts + [x.text for x in session.turns]}
        session.encode_calls = {"text": 0, "image": 0}
        return session


def _restore_items(session: VincieEditingSession, record: dict, frame: Callable, text: Callable, max_turns: int):
    """Rebuilds the sources, reference prompts and turns of a loaded ``record`` (``frame`` / ``text`` read one
    entry); a turn outside the model's turn table, a prompt of the wrong turn or a bad candidate is refused."""
    check_int("resolution", session.resolution, 1)
    check_choice("posterior", session.posterior, POSTERIORS)
    check_flag("use_prompt_template", session.use_prompt_template)  # "no" would silently count as true
    check_text("camera_prefix", session.camera_prefix)
    check_int("max_sequence_length", session.max_sequence_length, 2)
    width, height = record["reference_size"]
    session.reference_size = (check_int("reference_size", width, 1), check_int("reference_size", height, 1))
    session.sources = [frame(e, i) for i, e in enumerate(record["sources"])]
    session.reference_texts = [text(e) for e in record["reference_texts"]]
    if len(session.reference_texts) != len(session.sources) - 1:
        raise ValueError(f"{len(session.sources)} sources need {len(session.sources) - 1} reference prompts")
    session.turns = []
    for t in record["turns"]:
        instruction = text(t["text"])
        masks = [frame(m, instruction.turn) for m in t["masks"]]  # masks belong to the edit's source turn
        entries = t.get("candidates") or [t["frame"]]  # sessions saved before candidates were kept have one
        chosen = check_int("chosen", t.get("chosen", 0), 0, len(entries) - 1)
        current = frame(t["frame"], instruction.turn + 1)
        if entries[chosen] != t["frame"]:
            raise ValueError(f"candidate {chosen}, the chosen one, is not the turn's `frame`")
        candidates = [current if j == chosen else frame(e, instruction.turn + 1) for j, e in enumerate(entries)]
        session.turns.append(SessionTurn(t["instruction"], instruction, current, masks, candidates))
    for kinds, frames in (
        ((IMAGE,), session.sources),
        ((CURRENT_MASK, NEXT_MASK), [m for t in session.turns for m in t.mask_frames]),
    ):
        for f in frames:
            if f.kind not in kinds:
                raise ValueError(f"a frame of kind {f.kind!r} stands where a frame of kind {kinds} belongs")
    if any(c.kind != IMAGE for t in session.turns for c in t.candidates):
        raise ValueError(f"a turn's image is not of kind {IMAGE!r}")
    texts = session.reference_texts + [t.text for t in session.turns]
    if len(texts) > max_turns:
        raise ValueError(f"it has {len(texts)} turns but the model's turn table has {max_turns}")
    for k, t in enumerate(texts):
        if t.turn != k:
            raise ValueError(f"prompt {k} is numbered turn {t.turn}")


def _latent_size(pipe, reference_size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """The latent ``(h, w)`` that ``pipe`` makes of a ``reference_size`` (W, H) image at ``resolution``."""
    height, width = area_size(reference_size[1], reference_size[0], resolution)
    multiple = pipe.size_multiple
    return (height - height % multiple) // pipe.spatial_factor, (width - width % multiple) // pipe.spatial_factor


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
