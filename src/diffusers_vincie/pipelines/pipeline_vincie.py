"""VincieInContextPipeline: multi-turn in-context image editing with VINCIE.

Each turn conditions on the source image(s), every earlier output and every earlier instruction (official turn
loop, spec 6.1). The per-turn work:

    instructions --template--> prompts --tokenizer + end token--> text encoder --valid tokens--> segments
    images --official resize/crop--> VAE encode (posterior sample or mode) x scaling --> context latents
    [segments with turn tokens] + [context frames, target frame] --sampler (CFG, trailing shift-12 schedule)-->
    target latent --VAE decode--> image

`VincieEditingSession` (``pipe.start_session(image)``) keeps every encoded instruction and image, so a session
never encodes anything twice; the plain ``__call__`` runs the same machinery for a list of instructions. The
pipeline imports the session module, never the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.pipeline_utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..models.transformer_vincie import VincieTransformer
from ..sequence import FRAME_INDEX_MODES, Frame, session_text
from ..text_encoding import encode_prompts
from .image_processing import postprocess
from .lora import VincieLoraLoaderMixin
from .sampling import sample_frame
from .session import SessionFrame, SessionText, VincieEditingSession

OFFICIAL_NEGATIVE_PROMPT = (
    "Worst quality, Normal quality, Low quality, Low res, Blurry, Jpeg artifacts, Grainy, text, logo, watermark, "
    "banner, extra digits, signature, subtitling, Bad anatomy, Bad proportions, Deformed, Disconnected limbs, "
    "Disfigured, Extra arms, Extra limbs, Extra hands, Fused fingers, Gross proportions, Long neck, Malformed limbs, "
    "Mutated, Mutated hands, Mutated limbs, Missing arms, Missing fingers, Poorly drawn hands, Poorly drawn face, "
    "Nsfw, Uncensored, Cleavage, Nude, Nipples, Overexposed, Plain background, Grainy, Underexposed, "
    "Deformed structures"
)
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
FIDELITIES = ("exact", "official")
POSTERIORS = ("sample", "mode")


@dataclass
class VincieInContextPipelineOutput(BaseOutput):
    """Args:
    images: the edited image of every turn (PIL, numpy, tensor or latent per ``output_type``).
    masks: with chain-of-editing, the predicted ``(current, next)`` RoE mask images of every turn.
    """

    images: list
    masks: Optional[list] = None


# =====================================================================================================
#                                            Pipeline
# =====================================================================================================


class VincieInContextPipeline(DiffusionPipeline, VincieLoraLoaderMixin):
    """Multi-turn in-context image editing (VINCIE).

    Args:
        transformer: the `VincieTransformer`.
        vae: a diffusers `AutoencoderKL` (its ``scaling_factor``/``shift_factor`` are applied), or ``None`` for
            pixel-space models whose "latents" are the images in [-1, 1] (the small models trained here).
        text_encoder: any transformers text model returning ``last_hidden_state`` (``Qwen2Model`` for the
            official checkpoints, ``T5EncoderModel`` for ours).
        tokenizer: its tokenizer.
        scheduler: ``FlowMatchEulerDiscreteScheduler`` (official: ``shift=12``, trailing timesteps).
        default_negative_prompt: negative prompt used when ``negative_prompt`` is not given (the official one
            unless the model was trained with another unconditional text).
        frame_index_mode: temporal RoPE index of the frames: ``"compact"`` numbers the session's frames
            ``0, 1, 2, ...`` in order (official); ``"slots"`` gives turn ``k`` fixed slots ``3k`` (image), ``3k + 1``
            (current-frame RoE mask) and ``3k + 2`` (next-frame mask), so a model trained with masks knows which
            kind of frame it is generating (the training script's ``--frame_index slots``).
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        transformer: VincieTransformer,
        vae: Optional[AutoencoderKL],
        text_encoder,
        tokenizer,
        scheduler: FlowMatchEulerDiscreteScheduler,
        default_negative_prompt: str = OFFICIAL_NEGATIVE_PROMPT,
        frame_index_mode: str = "compact",
    ):
        super().__init__()
        if frame_index_mode not in FRAME_INDEX_MODES:
            raise ValueError(f"`frame_index_mode` must be one of {FRAME_INDEX_MODES}; got {frame_index_mode!r}.")
        self.register_modules(
            transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler
        )
        self.register_to_config(default_negative_prompt=default_negative_prompt, frame_index_mode=frame_index_mode)
        if vae is not None and vae.config.latent_channels != transformer.config.latent_channels:
            raise ValueError(
                f"VAE latent channels ({vae.config.latent_channels}) != transformer latent channels "
                f"({transformer.config.latent_channels})."
            )
        if vae is None and transformer.config.latent_channels != 3:
            raise ValueError("Without a VAE (pixel space) the transformer must have latent_channels=3.")

    # ------------------------------------------------------------------------------------- properties

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel (8 for the official VAE, 1 in pixel space)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Images are cropped to multiples of this (VAE factor x patch size: 16 for the official model)."""
        return self.spatial_factor * self.transformer.config.patch_size

    @property
    def block_causal(self) -> bool:
        return self.transformer.config.attention_layout == "block_causal"

    @property
    def interrupt(self) -> bool:
        return getattr(self, "_interrupt", False)

    # ------------------------------------------------------------------------------------- text

    def encode_prompt(self, prompts: list[str], max_sequence_length: int = 150) -> list[torch.Tensor]:
        """Encodes each prompt on its own (official rules, spec 8.2): tokens + one end token, valid states only.

        Returns:
            One ``(n_i + 1, text_dim)`` tensor per prompt, in the transformer's dtype.
        """
        states = encode_prompts(self.text_encoder, self.tokenizer, prompts, max_sequence_length, self._execution_device)
        return [s.to(self.transformer.dtype) for s in states]

    # ------------------------------------------------------------------------------------- images

    def encode_image(
        self, pixels: torch.Tensor, generator: Optional[torch.Generator] = None, posterior: str = "sample"
    ) -> torch.Tensor:
        """``(3, H, W)`` in [-1, 1] -> scaled channel-last latent ``(h, w, C)``."""
        device, dtype = self._execution_device, self.transformer.dtype
        if self.vae is None:
            return pixels.permute(1, 2, 0).to(device, dtype)
        dist = self.vae.encode(pixels[None].to(device, self.vae.dtype)).latent_dist
        z = dist.mode() if posterior == "mode" else dist.sample(generator)
        shift = self.vae.config.shift_factor or 0.0
        return ((z - shift) * self.vae.config.scaling_factor)[0].permute(1, 2, 0).to(dtype)

    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Scaled channel-last ``(h, w, C)`` -> ``(3, H, W)`` in [-1, 1] (one frame at a time, as official)."""
        if self.vae is None:
            return latent.permute(2, 0, 1).float()
        shift = self.vae.config.shift_factor or 0.0
        z = latent.permute(2, 0, 1)[None].to(self.vae.dtype) / self.vae.config.scaling_factor + shift
        return self.vae.decode(z).sample[0].float()

    # ------------------------------------------------------------------------------------- one frame

    def prepare_latents(
        self, shape: tuple, generator: Optional[torch.Generator], latents: Optional[torch.Tensor], device
    ) -> torch.Tensor:
        """The initial noise of one frame: drawn from ``generator``, or the given ``latents`` checked."""
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape} for this turn; got {tuple(latents.shape)}.")
        elif not torch.isfinite(latents).all():
            raise ValueError("`latents` contains NaN or Inf values.")
        return latents.to(device, self.transformer.dtype)

    def denoise(
        self,
        items: list,
        target: Frame,
        negative_tokens: Optional[torch.Tensor],
        guidance_scale: float,
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
        sequence = [it.item for it in items]
        mode = self.config.frame_index_mode
        noise = self.prepare_latents(self._frame_shape(len(frames), context.shape[1:]), generator, latents, context.device)

        def on_step(i, t, x_before, prediction, x_after):
            if callback_on_step_end is not None:
                tensors = {"latents": x_after} if "latents" in callback_on_step_end_tensor_inputs else {}
                outputs = callback_on_step_end(self, i, t, tensors)
                x_after = outputs.pop("latents", x_after)
            return None if self.interrupt else x_after

        self._num_timesteps = num_inference_steps
        with self.progress_bar(total=num_inference_steps) as progress:
            return sample_frame(
                self.transformer, self.scheduler, sequence, context, text, negative, guidance_scale,
                num_inference_steps, noise, target, mode, on_step=on_step, progress=progress,
            )

    def _frame_shape(self, num_context_frames: int, frame_shape) -> tuple:
        """Shape of the latents a turn integrates: the new frame (block-causal) or every frame (official)."""
        frames = 1 if self.block_causal else num_context_frames + 1
        return (frames, *frame_shape)

    # ------------------------------------------------------------------------------------- checks

    def check_inputs(self, images: list, prompts: list, output_type, fidelity, posterior, resolution, guidance_scale):
        if not images:
            raise ValueError("`image` is required: give the source image (or several reference images).")
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError("`prompt` must be a non-empty instruction or a list of non-empty instructions.")
        if len(prompts) < len(images):
            raise ValueError(
                f"Got {len(images)} images but only {len(prompts)} prompts: the session needs one instruction per "
                "context image (turns = prompts - images + 1)."
            )
        max_turns = self.transformer.config.max_turns
        if len(prompts) > max_turns:
            raise ValueError(f"{len(prompts)} prompts exceed the model's turn table ({max_turns} turns).")
        for name, value, allowed in (
            ("output_type", output_type, OUTPUT_TYPES),
            ("fidelity", fidelity, FIDELITIES),
            ("posterior", posterior, POSTERIORS),
        ):
            if value not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}; got {value!r}.")
        if fidelity == "official" and self.vae is None:
            raise ValueError("`fidelity='official'` re-encodes outputs through the VAE; this pipeline has none.")
        if resolution < self.size_multiple:
            raise ValueError(f"`resolution` must be >= {self.size_multiple}; got {resolution}.")
        if guidance_scale < 1.0:
            raise ValueError(f"`guidance_scale` must be >= 1 (1 disables guidance); got {guidance_scale}.")

    # ------------------------------------------------------------------------------------- call

    @torch.no_grad()
    def __call__(
        self,
        image: Union[PIL.Image.Image, list, None] = None,
        prompt: Union[str, list[str], None] = None,
        negative_prompt: Optional[str] = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        generator: Optional[torch.Generator] = None,
        latents: Optional[Union[torch.Tensor, list[torch.Tensor]]] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        resolution: int = 256,
        use_prompt_template: bool = True,
        camera_prefix: str = "",
        posterior: str = "sample",
        fidelity: str = "exact",
        chain_of_editing: bool = False,
        max_sequence_length: int = 150,
        callback_on_step_end: Optional[Callable[[Any, int, int, dict], dict]] = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ):
        """Edits ``image`` over ``len(prompt) - len(image) + 1`` turns.

        Args:
            image: the source image, or several reference images (multi-concept composition: use
                ``use_prompt_template=False`` and ``<IMGk>`` prompts, spec 7).
            prompt: one instruction per turn (plus one per extra reference image).
            negative_prompt: CFG negative prompt; default the pipeline's ``default_negative_prompt``.
            num_inference_steps: sampler steps (official 50).
            guidance_scale: CFG scale (official 7.5; 1 disables the negative pass).
            generator: torch generator for noise (and posterior samples).
            latents: initial noise of each turn (tensor for one turn or a list), shape ``(frames, h, w, C)``.
            output_type: "pil", "np", "pt" or "latent".
            return_dict: return a `VincieInContextPipelineOutput` instead of a tuple.
            resolution: images are resized to area ``resolution**2`` keeping the aspect ratio (official 256).
            use_prompt_template: wrap instructions as "Based on <IMGk>, ... Output <IMGk+1>: " (official).
            camera_prefix: text put before every instruction (paper D.4, official ``CAMERA_PREFIX``).
            posterior: VAE posterior "sample" (official) or "mode" (deterministic).
            fidelity: "exact" keeps each output's latent as the next turn's context (no decode/encode drift);
                "official" feeds outputs back through uint8 images, the official resize/crop and the VAE, as
                the official code does (bf16 truncating post-processing, same seed state every turn).
            chain_of_editing: before each image, predict the current-frame then the next-frame RoE mask
                (models trained with masks); the masks are returned in ``masks``.
            max_sequence_length: text tokens per prompt including the end token (official 150).
            callback_on_step_end: ``fn(pipe, step, timestep, {name: tensor}) -> dict`` after each step;
                returning ``{"latents": ...}`` replaces the latents.
            callback_on_step_end_tensor_inputs: tensors passed to the callback (only "latents").
        """
        images = list(image) if isinstance(image, (list, tuple)) else ([] if image is None else [image])
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        self.check_inputs(images, prompts, output_type, fidelity, posterior, resolution, guidance_scale)
        bad = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if bad:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` may only hold {self._callback_tensor_inputs}; got {bad}.")
        num_turns = len(prompts) - len(images) + 1
        turn_latents = latents if isinstance(latents, (list, tuple)) else [latents] + [None] * (num_turns - 1)
        if len(turn_latents) != num_turns:
            raise ValueError(f"`latents` must be one tensor per turn ({num_turns}); got {len(turn_latents)}.")
        session = self.start_session(
            images, resolution=resolution, generator=generator, posterior=posterior,
            use_prompt_template=use_prompt_template, camera_prefix=camera_prefix,
            max_sequence_length=max_sequence_length,
        )
        for prompt_text in prompts[: len(images) - 1]:  # prompts of the given images before the last one
            session.add_instruction(prompt_text)
        generation = dict(
            negative_prompt=negative_prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            generator=generator, fidelity=fidelity, chain_of_editing=chain_of_editing,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=tuple(callback_on_step_end_tensor_inputs),
        )
        outputs, masks = [], []
        for k, instruction in enumerate(prompts[len(images) - 1 :]):
            session.edit(instruction, latents=turn_latents[k], **generation)
            turn = session.turns[-1]
            if output_type == "latent":
                outputs.append(turn.latent)
            elif output_type == "pil":
                outputs.append(turn.image)
            else:  # decoded once, by the session
                outputs.append(postprocess(turn.frame.pixels, output_type))
            masks.append(turn.masks)
            if self.interrupt:  # an interrupt ends this call: no later turn runs
                break
        self.maybe_free_model_hooks()
        masks = masks if chain_of_editing else None
        if not return_dict:
            return (outputs, masks)
        return VincieInContextPipelineOutput(images=outputs, masks=masks)

    # ------------------------------------------------------------------------------------- sessions

    def start_session(self, image, resolution: int = 256, **options) -> "VincieEditingSession":
        """Starts an editing session on ``image`` (or a list of reference images); see `VincieEditingSession`."""
        images = image if isinstance(image, (list, tuple)) else [image]
        return VincieEditingSession(self, images, resolution=resolution, **options)
