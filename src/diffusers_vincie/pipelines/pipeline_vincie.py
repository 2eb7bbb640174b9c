"""VincieInContextPipeline: multi-turn in-context image editing with VINCIE.

Each turn conditions on the source image(s), every earlier output and every earlier instruction (the official turn
loop). The per-turn work:

    instructions --template--> prompts --tokenizer + end token--> text encoder --valid tokens--> segments
    images --official resize/crop--> VAE encode (posterior sample or mode), normalised --> context latents
    [segments with turn tokens] + [context frames, target frame] --sampler (CFG, shifted trailing schedule)-->
    target latent --VAE decode--> image

`VincieEditingSession` (``pipe.start_session(image)``) keeps every encoded instruction and image, so a session
never encodes anything twice; the plain ``__call__`` runs the same machinery for a list of instructions. The
pipeline imports the session module, never the reverse. The text encoder can run apart: ``encode_prompt`` on a
pipeline loaded with ``transformer=None, vae=None``, then ``prompt_embeds=`` on one loaded with
``text_encoder=None, tokenizer=None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.pipeline_utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..image_latents import decode_latents, encode_images, latent_channels, spatial_factor
from ..models.transformer_vincie import VincieTransformer
from ..sequence import FRAME_INDEX_MODES, Frame, format_turn_prompt, session_text
from ..text_encoding import encode_prompts
from .image_processing import postprocess
from .inputs import (
    FIDELITIES,
    OUTPUT_TYPES,
    POSTERIORS,
    as_image_list,
    callback_outputs,
    check_choice,
    check_embeddings,
    check_flag,
    check_image,
    check_int,
    check_sampling,
    check_text,
)
from .locking import serialised
from .lora import VincieLoraLoaderMixin
from .sampling import Guidance, SamplerStep, frame_latent_shape, sample_frame
from .session import SessionFrame, SessionText, VincieEditingSession

OFFICIAL_NEGATIVE_PROMPT = (
    "Worst quality, Normal quality, Low quality, Low res, Blurry, Jpeg artifacts, Grainy, text, logo, watermark, "
    "banner, extra digits, signature, subtitling, Bad anatomy, Bad proportions, Deformed, Disconnected limbs, "
    "Disfigured, Extra arms, Extra limbs, Extra hands, Fused fingers, Gross proportions, Long neck, Malformed limbs, "
    "Mutated, Mutated hands, Mutated limbs, Missing arms, Missing fingers, Poorly drawn hands, Poorly drawn face, "
    "Nsfw, Uncensored, Cleavage, Nude, Nipples, Overexposed, Plain background, Grainy, Underexposed, "
    "Deformed structures"
)


@dataclass
class VincieInContextPipelineOutput(BaseOutput):
    """Args:
    images: the edited images, turn by turn and candidate by candidate within a turn (``num_images_per_prompt``):
        a list of PIL images, or one stacked array / tensor for "np" ``(N, H, W, 3)``, "pt" ``(N, 3, H, W)`` and
        "latent" ``(N, h, w, C)``.
    masks: with chain-of-editing, the predicted ``(current, next)`` RoE mask images of every turn.
    """

    images: Union[list, np.ndarray, torch.Tensor]
    masks: Optional[list] = None


# =====================================================================================================
#                                            Pipeline
# =====================================================================================================


class VincieInContextPipeline(DiffusionPipeline, VincieLoraLoaderMixin):
    """Multi-turn in-context image editing (VINCIE).

    Args:
        transformer: the `VincieTransformer` (``None`` for a pipeline that only encodes prompts).
        vae: a diffusers VAE: `VincieAutoencoderKL` / ``AutoencoderKL`` (VINCIE-3B), `VincieAutoencoderKL7B`
            (VINCIE-7B) or another (``AutoencoderTiny``, ...); `diffusers_vincie.image_latents` reads its latent
            normalisation, spatial factor and channels from its config. ``None`` for pixel-space models whose
            "latents" are the images in [-1, 1] (the small models trained here).
        text_encoder: any transformers text model returning ``last_hidden_state`` (``Qwen2Model`` for the
            official checkpoints, ``T5EncoderModel`` for ours); ``None`` to edit from ``prompt_embeds`` only.
        tokenizer: its tokenizer.
        scheduler: ``FlowMatchEulerDiscreteScheduler`` (official: ``shift=12``, trailing timesteps).
        default_negative_prompt: negative prompt used when ``negative_prompt`` is not given (the official one
            unless the model was trained with another unconditional text).
        frame_index_mode: temporal RoPE index of the frames: ``"compact"`` numbers the session's frames
            ``0, 1, 2, ...`` in order (official); ``"slots"`` gives turn ``k`` fixed slots ``3k`` (image), ``3k + 1``
            (current-frame RoE mask) and ``3k + 2`` (next-frame mask), so a model trained with masks knows which
            kind of frame it is generating (the training script's ``--frame_index slots``).
        default_resolution, default_num_inference_steps, default_guidance_scale: the model's native sampling
            settings, used when a call leaves them out (official 256 / 50 / 7.5).
        default_consensus_samples: samples drawn for each output image, of which the one that agrees most with the
            others is kept (``consensus_samples`` of a call; default 1: one sample, as the official loop).
        max_resolution: the largest ``resolution`` accepted (default 4x ``default_resolution``): attention memory
            grows with the fourth power of the resolution, so a typo must not start a run that cannot finish.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["transformer", "vae", "text_encoder", "tokenizer"]
    _callback_tensor_inputs = ["latents", "noise_pred"]

    def __init__(
        self,
        transformer: Optional[VincieTransformer],
        vae: Optional[ModelMixin],
        text_encoder,
        tokenizer,
        scheduler: FlowMatchEulerDiscreteScheduler,
        default_negative_prompt: str = OFFICIAL_NEGATIVE_PROMPT,
        frame_index_mode: str = "compact",
        default_resolution: int = 256,
        default_num_inference_steps: int = 50,
        default_guidance_scale: float = 7.5,
        max_resolution: Optional[int] = None,
        default_consensus_samples: int = 1,
    ):
        super().__init__()
        check_choice("frame_index_mode", frame_index_mode, FRAME_INDEX_MODES)
        check_int("default_resolution", default_resolution, 1)
        check_int("default_num_inference_steps", default_num_inference_steps, 1, 1000)
        check_int("default_consensus_samples", default_consensus_samples, 1, 64)
        max_resolution = 4 * default_resolution if max_resolution is None else max_resolution
        check_int("max_resolution", max_resolution, default_resolution)
        self.register_modules(
            transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler
        )
        self.register_to_config(
            default_negative_prompt=default_negative_prompt,
            frame_index_mode=frame_index_mode,
            default_resolution=default_resolution,
            default_num_inference_steps=default_num_inference_steps,
            default_guidance_scale=float(default_guidance_scale),
            max_resolution=max_resolution,
            default_consensus_samples=default_consensus_samples,
        )
        if transformer is not None and latent_channels(vae) != transformer.config.latent_channels:
            raise ValueError(
                f"VAE latent channels ({latent_channels(vae)}, 3 without a VAE: pixel space) != transformer latent "
                f"channels ({transformer.config.latent_channels})."
            )

    # ------------------------------------------------------------------------------------- properties

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel (8 for the VINCIE-3B VAE, 16 for VINCIE-7B's, 1 in pixel space)."""
        return spatial_factor(self.vae)

    @property
    def size_multiple(self) -> int:
        """Images are cropped to multiples of this (VAE factor x patch size: 16 for the official model)."""
        return self.spatial_factor * self._require("transformer", "edit images").config.patch_size

    @property
    def block_causal(self) -> bool:
        return self._require("transformer", "edit images").config.attention_layout == "block_causal"

    @property
    def guidance_scale(self) -> float:
        """CFG scale of the running turn; a ``callback_on_step_end`` may set ``pipe._guidance_scale``."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def current_timestep(self) -> Optional[torch.Tensor]:
        """Timestep of the step being denoised, ``None`` outside the step loop (read by diffusers' cache hooks
        such as PyramidAttentionBroadcast and FasterCache)."""
        return getattr(self, "_current_timestep", None)

    @property
    def interrupt(self) -> bool:
        return getattr(self, "_interrupt", False)

    def _require(self, component: str, task: str):
        module = getattr(self, component, None)
        if module is None:
            raise ValueError(f"This pipeline was loaded with `{component}=None`; it cannot {task}.")
        return module

    # ------------------------------------------------------------------------------------- text

    def encode_text(self, prompts: list[str], max_sequence_length: int = 150) -> list[torch.Tensor]:
        """Encodes each (already templated) prompt on its own (the official rule): tokens + one end token,
        valid states only. Returns one ``(n_i + 1, text_dim)`` tensor per prompt."""
        encoder = self._require("text_encoder", "encode prompts (give `prompt_embeds`)")
        tokenizer = self._require("tokenizer", "encode prompts (give `prompt_embeds`)")
        states = encode_prompts(encoder, tokenizer, prompts, max_sequence_length, self._execution_device)
        dtype = self.transformer.dtype if self.transformer is not None else encoder.dtype
        return [s.to(dtype) for s in states]

    @serialised()
    def encode_prompt(
        self,
        prompt: Union[str, list[str]],
        negative_prompt: Optional[str] = None,
        do_classifier_free_guidance: bool = True,
        use_prompt_template: bool = True,
        camera_prefix: str = "",
        max_sequence_length: int = 150,
    ) -> tuple[list[torch.Tensor], Optional[torch.Tensor]]:
        """Per-turn prompt embeddings, for ``prompt_embeds`` / ``negative_prompt_embeds`` of a later call.

        Prompt ``k`` is templated for turn ``k`` exactly as ``__call__`` templates it, so embeddings made here
        (e.g. on a pipeline loaded with ``transformer=None, vae=None``, on the CPU or another GPU) give the same
        images as the prompts themselves.

        Returns:
            ``(prompt_embeds, negative_prompt_embeds)``: one ``(n_k + 1, text_dim)`` tensor per prompt, and the
            negative prompt's (``default_negative_prompt`` when ``negative_prompt`` is None), or None without CFG.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError("`prompt` must be a non-empty instruction or a list of non-empty instructions.")
        texts = [
            format_turn_prompt(p, k, camera_prefix) if use_prompt_template else camera_prefix + p
            for k, p in enumerate(prompts)
        ]
        # one text per encoder call, as the session encodes them: a padded batch gives the same values only up to
        # rounding on some CPUs (3e-6 seen on an AMD EPYC), and these embeddings must give the same images exactly
        prompt_embeds = [self.encode_text([text], max_sequence_length)[0] for text in texts]
        negative_prompt_embeds = None
        if do_classifier_free_guidance:
            text = self.config.default_negative_prompt if negative_prompt is None else negative_prompt
            negative_prompt_embeds = self.encode_text([text], max_sequence_length)[0]
        # returned under the names of `__call__`'s arguments (diffusers' convention, read by its pipeline tests)
        return prompt_embeds, negative_prompt_embeds

    # ------------------------------------------------------------------------------------- images

    def encode_image(
        self, pixels: torch.Tensor, generator: Optional[torch.Generator] = None, posterior: str = "sample"
    ) -> torch.Tensor:
        """``(3, H, W)`` in [-1, 1] -> normalised channel-last latent ``(h, w, C)`` (`image_latents.encode_images`)."""
        latents = encode_images(self.vae, pixels[None], posterior, generator, device=self._execution_device)
        return latents[0].to(self._execution_device, self.transformer.dtype)

    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised channel-last ``(h, w, C)`` -> ``(3, H, W)`` in [-1, 1] (`image_latents.decode_latents`)."""
        return decode_latents(self.vae, latent[None], device=self._execution_device)[0]

    # ------------------------------------------------------------------------------------- one frame

    def prepare_latents(
        self, shape: tuple, generator: Optional[torch.Generator], latents: Optional[torch.Tensor], device
    ) -> torch.Tensor:
        """The initial noise of one frame: drawn from ``generator``, or the given ``latents`` checked."""
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape:
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"`latents` must be a tensor of shape {shape} for this turn; got {got}.")
        elif not torch.isfinite(latents).all():
            raise ValueError("`latents` contains NaN or Inf values.")
        return latents.to(device, self.transformer.dtype)

    def denoise(
        self,
        items: list,
        target: Frame,
        negative_tokens: Optional[torch.Tensor],
        guidance: Guidance,
        num_inference_steps: int,
        generator: Optional[torch.Generator] = None,
        latents: Optional[torch.Tensor] = None,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: tuple = ("latents",),
    ) -> torch.Tensor:
        """Generates the frame ``target`` that follows ``items`` (encoded `SessionFrame` / `SessionText` in session
        order) with a progress bar, ``callback_on_step_end`` and ``interrupt``; returns its latent ``(h, w, C)``."""
        frames = [it for it in items if isinstance(it, SessionFrame)]
        texts = [it for it in items if isinstance(it, SessionText)]
        context = torch.stack([f.latent for f in frames])
        text = session_text([t.tokens for t in texts], [t.turn for t in texts])
        negative = None if negative_tokens is None else session_text([negative_tokens], [0])
        shape = frame_latent_shape(self.transformer, len(frames), context.shape[1:])
        noise = self.prepare_latents(shape, generator, latents, context.device)
        self._guidance_scale, self._num_timesteps = guidance.scale, num_inference_steps

        def on_step(step: SamplerStep) -> Optional[torch.Tensor]:
            latents = step.latents
            if callback_on_step_end is not None:
                available = {"latents": latents, "noise_pred": step.prediction.velocity}
                tensors = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                outputs = callback_outputs(callback_on_step_end(self, step.index, step.timestep, tensors))
                latents = outputs.pop("latents", latents)
                step.guidance.scale = float(self._guidance_scale)  # a callback may change the guidance
            return None if self.interrupt else latents

        def on_step_begin(index: int, timestep: torch.Tensor) -> None:
            self._current_timestep = timestep

        try:
            with self.progress_bar(total=num_inference_steps) as progress:
                return sample_frame(
                    self.transformer,
                    self.scheduler,
                    [it.item for it in items],
                    context,
                    text,
                    negative,
                    guidance,
                    num_inference_steps,
                    noise,
                    target,
                    self.config.frame_index_mode,
                    on_step=on_step,
                    progress=progress,
                    on_step_begin=on_step_begin,
                )
        finally:
            self._current_timestep = None

    # ------------------------------------------------------------------------------------- checks

    def check_inputs(self, images: list, num_prompts: int, output_type, fidelity, posterior, resolution) -> None:
        """Arguments of a call (the per-turn sampling arguments are checked by the session's ``edit``)."""
        self._require("transformer", "edit images")
        if not images:
            raise ValueError("`image` is required: give the source image (or several reference images).")
        for i, image in enumerate(images):
            check_image("image" if len(images) == 1 else f"image[{i}]", image)
        if num_prompts < len(images):
            raise ValueError(
                f"Got {len(images)} images but only {num_prompts} prompts: the session needs one instruction per "
                "context image (turns = prompts - images + 1)."
            )
        max_turns = self.transformer.config.max_turns
        if num_prompts > max_turns:
            raise ValueError(f"{num_prompts} prompts exceed the model's turn table ({max_turns} turns).")
        check_choice("output_type", output_type, OUTPUT_TYPES)
        check_choice("fidelity", fidelity, FIDELITIES)
        check_choice("posterior", posterior, POSTERIORS)
        if fidelity == "official" and self.vae is None:
            raise ValueError("`fidelity='official'` re-encodes outputs through the VAE; this pipeline has none.")
        check_int(
            "resolution",
            resolution,
            self.size_multiple,
            self.config.max_resolution,
            hint=f" (this model's native resolution is {self.config.default_resolution}; `max_resolution` in "
            "its config bounds it)",
        )

    # ------------------------------------------------------------------------------------- call

    @serialised()  # one call at a time per pipeline: its modules, scheduler and call state are shared
    @torch.no_grad()
    def __call__(
        self,
        image: Union[PIL.Image.Image, np.ndarray, torch.Tensor, list, None] = None,
        prompt: Union[str, list[str], None] = None,
        negative_prompt: Optional[str] = None,
        prompt_embeds: Optional[list[torch.Tensor]] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        guidance_interval: float = 1.0,
        guidance_rescale: float = 0.0,
        generator: Union[torch.Generator, list[torch.Generator], None] = None,
        latents: Optional[Union[torch.Tensor, list[torch.Tensor]]] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        resolution: Optional[int] = None,
        use_prompt_template: bool = True,
        camera_prefix: str = "",
        posterior: str = "sample",
        fidelity: str = "exact",
        chain_of_editing: bool = False,
        max_sequence_length: int = 150,
        callback_on_step_end: Optional[Callable[[Any, int, int, dict], dict]] = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        consensus_samples: Optional[int] = None,
    ):
        """Edits ``image`` over ``len(prompt) - len(image) + 1`` turns.

        Args:
            image: the source image, or several reference images (multi-concept composition: use
                ``use_prompt_template=False`` and ``<IMGk>`` prompts): a PIL image, a numpy ``(H, W, 3)``
                or torch ``(3, H, W)`` image, a list of them, or a stack in diffusers' batched layout (numpy
                ``(N, H, W, 3)``, torch ``(N, 3, H, W)``) read as N images.
            prompt: one instruction per turn (plus one per extra reference image).
            negative_prompt: CFG negative prompt; default the pipeline's ``default_negative_prompt``.
            prompt_embeds: instead of ``prompt``, one embedding per prompt from `encode_prompt`.
            negative_prompt_embeds: instead of ``negative_prompt``, from `encode_prompt`.
            num_images_per_prompt: candidates of each turn; the next turn continues from the first (use a session
                and ``session.choose`` to continue from another).
            num_inference_steps: sampler steps (default the pipeline's ``default_num_inference_steps``; official 50).
            guidance_scale: CFG scale (default ``default_guidance_scale``; official 7.5; 1 skips the negative pass).
            consensus_samples: samples drawn for each output image (each candidate), of which the one closest to
                the others is kept (default ``default_consensus_samples``; official 1). A sample that went astray
                is rarely the consensus, so chained edits fail less often, at that many times the compute.
            guidance_interval: fraction of the leading steps that are guided (official ``cfg.partial``, 1).
            guidance_rescale: std rescaling of the guided velocity (official ``cfg.rescale``, 0).
            generator: a torch generator for noise (and posterior samples), or one per candidate.
            latents: initial noise of each turn (tensor for one turn or a list), shape ``(frames, h, w, C)``.
            output_type: "pil", "np", "pt" or "latent".
            return_dict: return a `VincieInContextPipelineOutput` instead of a tuple.
            resolution: images are resized to area ``resolution**2`` keeping the aspect ratio (default the
                pipeline's ``default_resolution``; official 256; at most ``max_resolution``).
            use_prompt_template: wrap instructions as "Based on <IMGk>, ... Output <IMGk+1>: " (official).
            camera_prefix: text put before every instruction (paper D.4, official ``CAMERA_PREFIX``).
            posterior: VAE posterior "sample" (official) or "mode" (deterministic).
            fidelity: "exact" keeps each output's latent as the next turn's context (no decode/encode drift);
                "official" feeds outputs back through uint8 images, the official resize/crop and the VAE, as
                the official loop does (bf16 truncating post-processing, same seed state every turn); the official
                loop also re-encodes every earlier context image at each turn with a fresh posterior sample,
                which this session does not repeat, so sampled posteriors differ from it.
            chain_of_editing: before each image, predict the current-frame then the next-frame RoE mask
                (models trained with masks); the masks are returned in ``masks``.
            max_sequence_length: text tokens per prompt including the end token (official 150).
            callback_on_step_end: ``fn(pipe, step, timestep, {name: tensor}) -> dict`` after each step of every
                denoised frame (masks included); returning ``{"latents": ...}`` replaces the latents, and setting
                ``pipe._guidance_scale`` changes the guidance of later steps.
            callback_on_step_end_tensor_inputs: tensors passed to the callback ("latents", "noise_pred").
        """
        images = as_image_list(image)
        if prompt_embeds is not None:
            if prompt is not None:
                raise ValueError("Give either `prompt` or `prompt_embeds`, not both.")
            embeds = [prompt_embeds] if isinstance(prompt_embeds, torch.Tensor) else list(prompt_embeds)
            prompts = [None] * len(embeds)
        else:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
            if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
                raise ValueError("`prompt` must be a non-empty instruction or a list of non-empty instructions.")
            for k, text in enumerate(prompts):
                check_text("prompt" if len(prompts) == 1 else f"prompt[{k}]", text)
            embeds = [None] * len(prompts)
        if negative_prompt is not None:
            check_text("negative_prompt", negative_prompt)
        check_flag("chain_of_editing", chain_of_editing)  # the others are checked by the session, before encoding
        resolution = self.config.default_resolution if resolution is None else resolution
        self.check_inputs(images, len(prompts), output_type, fidelity, posterior, resolution)
        text_dim = self.transformer.config.text_embed_dim
        for k, embedding in enumerate(embeds if prompt_embeds is not None else []):
            check_embeddings("prompt_embeds" if len(embeds) == 1 else f"prompt_embeds[{k}]", embedding, text_dim)
        if negative_prompt_embeds is not None:
            check_embeddings("negative_prompt_embeds", negative_prompt_embeds, text_dim)
        check_sampling(  # once here too, so that a bad value stops the call before any image is encoded
            self.config,
            num_inference_steps,
            guidance_scale,
            guidance_interval,
            guidance_rescale,
            num_images_per_prompt,
            consensus_samples,
            generator,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            self._callback_tensor_inputs,
        )
        num_turns = len(prompts) - len(images) + 1
        turn_latents = latents if isinstance(latents, (list, tuple)) else [latents] + [None] * (num_turns - 1)
        if len(turn_latents) != num_turns:
            raise ValueError(f"`latents` must be one tensor per turn ({num_turns}); got {len(turn_latents)}.")

        session = self.start_session(
            images,
            resolution=resolution,
            generator=generator,
            posterior=posterior,
            use_prompt_template=use_prompt_template,
            camera_prefix=camera_prefix,
            max_sequence_length=max_sequence_length,
        )
        for k in range(len(images) - 1):  # prompts of the given images before the last one
            session.add_instruction(prompts[k], prompt_embeds=embeds[k])
        generation = dict(
            negative_prompt=negative_prompt,
            negative_prompt_embeds=negative_prompt_embeds,
            num_images_per_prompt=num_images_per_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            consensus_samples=consensus_samples,
            guidance_interval=guidance_interval,
            guidance_rescale=guidance_rescale,
            generator=generator,
            fidelity=fidelity,
            chain_of_editing=chain_of_editing,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=tuple(callback_on_step_end_tensor_inputs),
        )
        outputs, masks = [], []
        for k in range(len(images) - 1, len(prompts)):
            session.edit(prompts[k], prompt_embeds=embeds[k], latents=turn_latents[k - len(images) + 1], **generation)
            turn = session.turns[-1]
            for frame in turn.candidates:
                if output_type == "latent":
                    outputs.append(frame.latent)
                elif output_type == "pil":
                    outputs.append(frame.image)
                else:  # decoded once, by the session
                    outputs.append(postprocess(frame.pixels, output_type))
            masks.append(turn.masks)
            if self.interrupt:  # an interrupt ends this call: no later turn runs
                break
        self.maybe_free_model_hooks()
        if output_type == "np":
            outputs = np.stack(outputs)
        elif output_type in ("pt", "latent"):
            outputs = torch.stack(outputs)
        masks = masks if chain_of_editing else None
        if not return_dict:
            return (outputs, masks)
        return VincieInContextPipelineOutput(images=outputs, masks=masks)

    # ------------------------------------------------------------------------------------- sessions

    def start_session(self, image, resolution: Optional[int] = None, **options) -> VincieEditingSession:
        """Starts an editing session on ``image`` (or a list of reference images); see `VincieEditingSession`."""
        images = as_image_list(image)
        resolution = self.config.default_resolution if resolution is None else resolution
        return VincieEditingSession(self, images, resolution=resolution, **options)
