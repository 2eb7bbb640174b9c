"""Parity verifier: reproduces golden tensors of the official VINCIE code with this package's own code.

Usage::

    python -m diffusers_vincie.parity FOLDER [--only forward,sample,vae]

``FOLDER`` has the layout of the official fixtures (``config.json``, ``dit_official.safetensors``,
``forward_*.safetensors``, ``sample_*.safetensors``, ``vae_*.safetensors`` and, for the T5 family,
``t5_encoder.safetensors`` + ``text_path.safetensors``; see the fixtures' README). Either model family works: the
family is whatever the converted checkpoint and ``config.json`` say. The official weights are converted with the
package's converters and every stored output is recomputed from the stored inputs: text encoding and session
assembly, transformer forwards (and per-block intermediates, RoPE angles, post-RoPE q/k), the official bf16
roundings, the sampling loop with classifier-free guidance, the timestep schedule and the VAE. One line per check,
exit status 1 if any check exceeds its tolerance or a file present in the folder has no check.

Tolerances are float32 error levels, not fitted to one fixture set: an independent float32 run differs from the
official one by ~2e-6 on a forward (float32 vs float64 rounding), so forwards allow 1e-4 and the sampler, whose
CFG scale amplifies differences, 1e-3 on its final latent.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from safetensors.torch import load_file

from .conversion.dit import load_official_dit
from .models.transformer_vincie import VincieTransformer
from .sequence import PackedText, build_condition, pack_sessions, pack_texts, select_valid_tokens, session_text

FORWARD_TOL = 1e-4  # float32 transformer forward and intermediates
TEXT_TOL = 1e-5  # float32 text encoder states (one small encoder, no CFG amplification)
BF16_ATTENTION_TOL = 1e-2  # official bf16 q/k/v cast vs its emulation (fixture README: loose check)
# A whole forward in bf16 (weights, activations, attention): bf16 keeps 8 bits, so outputs of magnitude ~5 carry
# errors of a few 1e-2 after a few blocks; the timestep/RoPE rounding this checks moves them by ~1.7.
BF16_RUN_TOL = 1e-1
SAMPLE_STEP_TOL = 1e-4
SAMPLE_FINAL_TOL = 1e-3
FILE_KINDS = {"forward": "forward", "sample": "sample", "t5": "text", "text": "text", "vae": "vae"}


@dataclass
class Check:
    name: str
    actual: torch.Tensor
    expected: torch.Tensor
    tolerance: float
    missing: Optional[str] = None  # why this golden tensor has no check yet (a failure)

    @classmethod
    def not_checked(cls, name: str, reason: str) -> "Check":
        return cls(name, torch.zeros(0), torch.zeros(0), 0.0, missing=reason)

    @property
    def error(self) -> float:
        if self.missing is not None or self.actual.shape != self.expected.shape:
            return float("inf")
        return (self.actual.double() - self.expected.double()).abs().max().item() if self.expected.numel() else 0.0

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance

    def line(self) -> str:
        if self.missing is not None:
            return f"FAIL {self.name}: no check yet ({self.missing})"
        status = "OK  " if self.passed else "FAIL"
        shape = (
            ""
            if self.actual.shape == self.expected.shape
            else f" shape {tuple(self.actual.shape)} vs {tuple(self.expected.shape)}"
        )
        return f"{status} {self.name}: max abs err {self.error:.3e} (tol {self.tolerance:g}){shape}"


# =====================================================================================================
#                                            Forward checks
# =====================================================================================================


class _Recorder:
    """Forward hooks collecting the official ``inter.*`` intermediates from a `VincieTransformer`."""

    def __init__(self, model: VincieTransformer):
        self.values: dict[str, torch.Tensor] = {}
        hooks = [
            # (N, 2, 3, D) [layer, slot, channel] -> the official interleaved (N, 6D), index 6c + 3*layer + slot
            model.time_embed.register_forward_hook(
                lambda module, args, output: self.values.__setitem__(
                    "inter.emb", output.permute(0, 3, 1, 2).flatten(1)
                )
            ),
            model.patch_embed.register_forward_hook(self._store("inter.vid_in")),
            model.context_embedder.register_forward_hook(self._store("inter.txt_in")),
            model.proj_out.register_forward_pre_hook(
                lambda m, args: self.values.__setitem__("inter.vid_out_ada", args[0])
            ),
            # called on the video positions, then on the text positions
            model.rope.register_forward_hook(self._store_rope_angles),
        ]
        if hasattr(model.context_embedder, "mlp"):
            hooks.append(model.context_embedder.mlp.register_forward_hook(self._store("inter.txt_in_mlp")))
        for i, block in enumerate(model.transformer_blocks):
            hooks.append(block.register_forward_hook(self._store_pair(f"inter.block{i}")))
            block.attn.project = self._recording_projection(block.attn, f"inter.block{i}.rope")
        self.model, self.hooks = model, hooks

    def _store_rope_angles(self, module, args, output) -> None:
        stream = "txt" if "inter.rope.vid_freqs" in self.values else "vid"
        self.values[f"inter.rope.{stream}_freqs"] = module.angles(args[0])

    def _recording_projection(self, attn, prefix: str) -> Callable:
        """Wraps ``attn.project`` (video stream first, then text) to keep q and k after qk-norm and RoPE."""
        project = type(attn).project.__get__(attn)

        def recording(x, stream, rope):
            q, k, v = project(x, stream, rope)
            tag = "txt" if f"{prefix}.vid_q" in self.values else "vid"
            self.values[f"{prefix}.{tag}_q"], self.values[f"{prefix}.{tag}_k"] = q, k
            return q, k, v

        return recording

    def _store(self, name: str) -> Callable:
        return lambda module, args, output: self.values.__setitem__(name, output)

    def _store_pair(self, prefix: str) -> Callable:
        def hook(module, args, output):
            self.values[f"{prefix}.vid"], self.values[f"{prefix}.txt"] = output

        return hook

    def close(self) -> None:
        for h in self.hooks:
            h.remove()
        for block in self.model.transformer_blocks:
            del block.attn.project  # back to the class method


def _forward_tol(t: dict) -> float:
    """The bf16-attention fixture's outputs come from the official bf16 q/k/v cast (checked with its emulation)."""
    return BF16_ATTENTION_TOL if "out.vid_sample_fp32_attention" in t else FORWARD_TOL


def _run(model: VincieTransformer, t: dict, txt_key: str = "dit.txt", dtype: torch.dtype = torch.float32):
    shape_key = txt_key + "_shape"
    vid, txt = t["dit.vid"].to(dtype), t[txt_key].to(dtype)
    return model(vid, t["dit.vid_shape"], txt, t[shape_key][:, 0], t["dit.timestep"]).sample.float()


def _sample_prefixes(t: dict) -> list[str]:
    """``pre.sN.`` for packed batches, ``pre.`` for one session, none without pre-assembly pieces."""
    samples = sorted({k.split(".")[1] for k in t if k.startswith("pre.s") and k.endswith(".x_t")})
    return [f"pre.{s}." for s in samples] if samples else (["pre."] if "pre.x_t" in t else [])


def _assemble_sample(model: VincieTransformer, t: dict, prefix: str, index: int):
    """Rebuilds one sample's session text (from its encoder states, when stored) and condition.

    Without encoder states (their text path is a file of its own) the sample's rows of the fixture's fused
    ``dit.txt`` stand in, and the text is checked by that file's checks instead."""
    checks = []
    if f"{prefix}text_embeds" in t:
        segments = select_valid_tokens(t[f"{prefix}text_embeds"], t[f"{prefix}text_masks"])
        text = session_text(segments, t[f"{prefix}turn_ids"].tolist())
    else:
        lengths = t["dit.txt_shape"][:, 0].tolist()
        start = sum(lengths[:index])
        text = PackedText(t["dit.txt"][start : start + lengths[index]], None, [lengths[index]])
    cond = build_condition(t[f"{prefix}image_latents"])
    if f"{prefix}cond" in t:
        checks.append(Check(f"assembly {prefix}cond", cond, t[f"{prefix}cond"], 0.0))
    if f"{prefix}turn_embeddings" in t:
        turns = model.turn_embedding(t[f"{prefix}turn_ids"])
        checks.append(Check(f"assembly {prefix}turn_embeddings", turns, t[f"{prefix}turn_embeddings"], 0.0))
    return text, cond, checks


def _assembly_checks(model: VincieTransformer, t: dict, name: str, prefixes: list[str]) -> Iterator[Check]:
    texts, videos = [], []
    for index, prefix in enumerate(prefixes):
        text, cond, checks = _assemble_sample(model, t, prefix, index)
        yield from checks
        texts.append(text)
        x_t = t[f"{prefix}x_t"]
        if f"{prefix}x0" in t:
            tt = t["dit.timestep"][index] / 1000.0
            rebuilt = (1 - tt) * t[f"{prefix}x0"] + tt * t[f"{prefix}noise"]
            yield Check(f"{name} {prefix}x_t", rebuilt, x_t, 1e-6)
        videos.append(torch.cat([x_t, cond], -1))
    video, shapes, _, _ = pack_sessions(videos, [x.states for x in texts])
    text, turn_ids, lengths = pack_texts(texts)
    yield Check(f"{name} packed video", video, t["dit.vid"], 0.0)
    yield Check(f"{name} video shapes", shapes.float(), t["dit.vid_shape"].float(), 0.0)
    yield Check(f"{name} text lengths", lengths.float(), t["dit.txt_shape"][:, 0].float(), 0.0)
    if turn_ids is not None:  # text rebuilt from encoder states (else it is the fixture's own dit.txt)
        yield Check(f"{name} packed text", model.fuse_turn_tokens(text, turn_ids), t["dit.txt"], 0.0)
    # the model fuses the turn tokens inside forward(): its output from the assembled inputs is the official one
    assembled = model(video, shapes, text, lengths, t["dit.timestep"], text_turn_ids=turn_ids).sample
    yield Check(f"{name} out from assembled inputs", assembled, t["out.vid_sample"], _forward_tol(t))


def forward_checks(
    model: VincieTransformer, t: dict, name: str, cfg_scale: float, session: Optional[dict] = None
) -> Iterator[Check]:
    """Checks of one ``forward_*`` file; ``session`` holds ``forward_session``'s tensors, whose inputs the bf16
    variants reuse when they do not store their own."""
    with torch.no_grad():
        if "dit.vid" not in t and session is not None:
            t = {**{k: v for k, v in session.items() if k.startswith(("dit.", "pre."))}, **t}
        if "out.vid_sample_bf16" in t:
            yield from _bf16_run_checks(model, t, name)
            return
        prefixes = _sample_prefixes(t)
        if prefixes and "out.vid_sample_fp32_attention" not in t:
            yield from _assembly_checks(model, t, name, prefixes)
        if "pre.neg_text_embeds" in t:
            neg = session_text(select_valid_tokens(t["pre.neg_text_embeds"], t["pre.neg_text_masks"]), [0])
            fused = model.fuse_turn_tokens(neg.states, neg.turn_ids)
            yield Check(f"{name} packed negative text", fused, t["dit.txt_neg"], 0.0)

        if "out.vid_sample_fp32_attention" in t:  # official bf16 q/k/v cast
            model.set_attention_qkv_dtype(torch.bfloat16)
            try:
                yield Check(f"{name} out (bf16 q/k/v)", _run(model, t), t["out.vid_sample"], BF16_ATTENTION_TOL)
            finally:
                model.set_attention_qkv_dtype(None)
            yield Check(
                f"{name} out (fp32 attention)", _run(model, t), t["out.vid_sample_fp32_attention"], FORWARD_TOL
            )
            return

        recorder = _Recorder(model)
        try:
            pos = _run(model, t)
        finally:
            recorder.close()
        yield Check(f"{name} out", pos, t["out.vid_sample"], FORWARD_TOL)
        for key in sorted(k for k in t if k.startswith("inter.") and not k.endswith("_shape")):
            yield Check(f"{name} {key}", recorder.values[key].reshape(t[key].shape), t[key], FORWARD_TOL)
        if "dit.txt_neg" in t:
            neg = _run(model, t, "dit.txt_neg")
            yield Check(f"{name} out_neg", neg, t["out.vid_sample_neg"], FORWARD_TOL)
            if "out.vid_sample_cfg" in t:
                cfg = neg + cfg_scale * (pos - neg)
                yield Check(f"{name} out_cfg", cfg, t["out.vid_sample_cfg"], FORWARD_TOL)


def _bf16_run_checks(model: VincieTransformer, t: dict, name: str) -> Iterator[Check]:
    """The official GPU run's bf16 mixed precision (FSDP): its exact timestep and RoPE-angle roundings, and a
    whole bf16 forward with `VincieTransformer.set_timestep_and_rope_dtype`."""
    rounded = model.time_embed.rounded_timestep
    model.set_timestep_and_rope_dtype(torch.bfloat16)
    try:
        yield Check(f"{name} timestep as seen", rounded(t["dit.timestep_fp32"]), t["dit.timestep_as_seen_bf16"], 0.0)
        recorder = _Recorder(model)
        try:
            _run(model, {**t, "dit.timestep": t["dit.timestep_fp32"]})
        finally:
            recorder.close()
        for stream in ("vid", "txt"):
            angles = recorder.values[f"inter.rope.{stream}_freqs"]
            yield Check(f"{name} {stream} RoPE angles", angles, t[f"rope.{stream}_freqs_bf16_buffers"], 0.0)
        if "pre.turn_ids" in t:
            turns = model.turn_embedding(t["pre.turn_ids"]).bfloat16().float()
            yield Check(f"{name} turn embeddings", turns, t["turn_embeddings_bf16"], 0.0)
        bf16_model = VincieTransformer.from_config(model.config)
        bf16_model.load_state_dict({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}, assign=True)
        bf16_model.set_timestep_and_rope_dtype(torch.bfloat16)
        bf16_model.set_attention_qkv_dtype(torch.bfloat16)
        whole = _run(bf16_model, {**t, "dit.timestep": t["dit.timestep_fp32"]}, dtype=torch.bfloat16)
        yield Check(f"{name} out (bf16 run)", whole, t["out.vid_sample_bf16"], BF16_RUN_TOL)
    finally:
        model.set_timestep_and_rope_dtype(None)


# =====================================================================================================
#                                         Sampling + schedule
# =====================================================================================================


def sample_checks(
    model: VincieTransformer,
    t: dict,
    config: dict,
    name: str,
    decode_last_frame: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> Iterator[Check]:
    """Checks of one ``sample_*`` file. ``decode_last_frame`` maps the final latents ``(F, h, w, C)`` to the last
    frame's image ``(3, H, W)`` (this family's VAE); without it a stored decode is reported as not checked."""
    from .pipelines.sampling import FullAttentionVelocity, official_scheduler, run_sampler, set_trailing_timesteps

    shift = float(config["diffusion"]["timesteps"]["sampling"]["shift"])
    for key in sorted(t):  # full schedules: "timesteps_<steps>_shift<shift>", or "timesteps_<steps>" at the config's
        if match := re.fullmatch(r"timesteps_(\d+)(?:_shift(\d+))?", key):
            steps, key_shift = int(match.group(1)), float(match.group(2) or shift)
            timesteps = set_trailing_timesteps(official_scheduler(shift=key_shift), steps)
            yield Check(f"{name} timesteps {steps} shift {key_shift:g}", timesteps.float(), t[key], 1e-3)
    if "timesteps" not in t or "init_noise" not in t:
        return
    steps = t["timesteps"].numel()
    sched = official_scheduler(shift=shift)
    yield Check(
        f"{name} timesteps ({steps} steps)", set_trailing_timesteps(sched, steps).float(), t["timesteps"], 1e-3
    )

    states: dict[str, torch.Tensor] = {}

    def record(step) -> torch.Tensor:
        states[f"step{step.index}.x_t"] = step.latents_before.clone()
        states[f"step{step.index}.pred_pos"] = step.prediction.positive.clone()
        if step.prediction.negative is not None:
            states[f"step{step.index}.pred_neg"] = step.prediction.negative.clone()
        return step.latents

    def fused(key: str) -> PackedText:  # the fixture's session texts already hold their turn embeddings
        return PackedText(t[key], None, [t[key].shape[0]])

    velocity = FullAttentionVelocity(model, t["cond"], fused("dit.txt"), fused("dit.txt_neg"))
    with torch.no_grad():
        set_trailing_timesteps(sched, steps)
        final = run_sampler(sched, t["init_noise"], velocity, float(t["cfg_scale"]), on_step=record)
    for key in sorted(k for k in t if k.startswith("step") and not k.endswith(".t")):
        yield Check(f"{name} {key}", states[key], t[key], SAMPLE_STEP_TOL)
    yield Check(f"{name} final latent", final, t["final_latent"], SAMPLE_FINAL_TOL)
    if "decoded_last_frame" in t and decode_last_frame is not None:
        from .conversion.vae import vae_parity_tolerance

        with torch.no_grad():
            decoded = decode_last_frame(t["final_latent"])
        tolerance = vae_parity_tolerance(t["decoded_last_frame"])
        yield Check(f"{name} decoded_last_frame", decoded, t["decoded_last_frame"], tolerance)
    elif "decoded_last_frame" in t:
        yield Check.not_checked(
            f"{name} decoded_last_frame", "decoding the final latent needs the VAE: vae_official.safetensors"
        )


# =====================================================================================================
#                                        Text encoder + text path
# =====================================================================================================


def text_checks(model: VincieTransformer, folder: Path, config: dict, session: Optional[dict]) -> Iterator[Check]:
    """The T5 text path (``t5_encoder`` weights + ``text_path`` tensors): encoder states through this package's
    `encode_token_ids` (padding mask passed, masked-in rows kept), the session text with its turn tokens, and,
    when ``forward_session`` is present, that text driving the session's forward."""
    from transformers import T5Config, T5EncoderModel

    from .text_encoding import encode_token_ids

    for needed in ("t5_encoder.safetensors", "text_path.safetensors"):
        if not (folder / needed).is_file():
            raise ValueError(f"The text-path checks need {needed} in {folder}.")
    if "t5_config" not in config.get("text", {}):
        raise ValueError(f"{folder / 'config.json'} has no text.t5_config (the T5 encoder's configuration).")
    t = _load(folder / "text_path.safetensors")
    encoder = T5EncoderModel(T5Config(**config["text"]["t5_config"])).eval()
    encoder.load_state_dict(_load(folder / "t5_encoder.safetensors"), strict=True)
    with torch.no_grad():
        ids, mask = t["t5.input_ids"], t["t5.attention_mask"].long()
        states = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        yield Check("text t5 last_hidden_state", states, t["t5.last_hidden_state"], TEXT_TOL)
        segments = encode_token_ids(encoder, ids, mask)
        yield Check("text kept rows", torch.cat(segments), t["masked_tokens"], TEXT_TOL)
        lengths = torch.tensor([[len(s)] for s in segments])
        yield Check("text kept lengths", lengths.float(), t["masked_lengths"].float(), 0.0)
        yield Check("text turn embeddings", model.turn_embedding(t["turn_ids"]), t["turn_embeddings"], 0.0)
        text = session_text(segments, t["turn_ids"].tolist())
        fused = model.fuse_turn_tokens(text.states, text.turn_ids)
        yield Check("text assembled session text", fused, t["assembled.txt"], TEXT_TOL)
        yield Check("text assembled length", torch.tensor([[len(text)]]).float(), t["assembled.txt_shape"].float(), 0)
        negative = session_text(encode_token_ids(encoder, t["t5.neg_input_ids"], t["t5.neg_attention_mask"]), [0])
        fused_negative = model.fuse_turn_tokens(negative.states, negative.turn_ids)
        yield Check("text assembled negative text", fused_negative, t["assembled.txt_neg"], TEXT_TOL)
        yield Check(
            "text negative length",
            torch.tensor([[len(negative)]]).float(),
            t["assembled.txt_neg_shape"].float(),
            0.0,
        )
        neg_states = encoder(input_ids=t["t5.neg_input_ids"], attention_mask=t["t5.neg_attention_mask"].long())
        yield Check("text t5 negative", neg_states.last_hidden_state, t["t5.neg_last_hidden_state"], TEXT_TOL)
        bf16_states = encoder.to(torch.bfloat16)(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        yield Check("text t5 bf16 encoder", bf16_states, t["t5.last_hidden_state_bf16_model"], BF16_RUN_TOL)
        same_session = session is not None and session["dit.txt"].shape == t["assembled.txt"].shape
        if same_session:  # this text, encoded here, reproduces the session's official forward
            for txt, key in ((text, "out.vid_sample"), (negative, "out.vid_sample_neg")):
                out = model(
                    session["dit.vid"],
                    session["dit.vid_shape"],
                    txt.states,
                    [len(txt)],
                    session["dit.timestep"],
                    text_turn_ids=txt.turn_ids,
                ).sample
                yield Check(f"text forward_session {key} from encoded text", out, session[key], FORWARD_TOL)


# =====================================================================================================
#                                                Driver
# =====================================================================================================


def _load(path: Path) -> dict[str, torch.Tensor]:
    return load_file(os.fspath(path))


def _last_frame_decoder(folder: Path, config: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """The folder's VAE, converted as the converter does, decoding the last frame of channels-last latents
    ``(F, h, w, C)`` to an image ``(3, H, W)`` through the image owner, as the pipeline decodes a turn."""
    from .conversion.vae import convert_official_vae
    from .image_latents import decode_latents

    vae = convert_official_vae(_load(folder / "vae_official.safetensors"), config.get("vae"))
    return lambda latents: decode_latents(vae, latents[-1:])[0]


def run_parity(folder: str | os.PathLike, only: Optional[set[str]] = None) -> list[Check]:
    """Runs every check the folder supports; raises ``ValueError`` for files that have no check."""
    folder = Path(folder)
    if not (folder / "dit_official.safetensors").is_file() and not (folder / "vae_official.safetensors").is_file():
        raise FileNotFoundError(f"{folder} holds neither dit_official.safetensors nor vae_official.safetensors.")
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    checks: list[Check] = []
    model = None
    if (folder / "dit_official.safetensors").is_file() and (not only or only & {"forward", "sample", "text"}):
        model = load_official_dit(_load(folder / "dit_official.safetensors"))
    decode_last_frame = None
    if (folder / "vae_official.safetensors").is_file() and (not only or "sample" in only):
        decode_last_frame = _last_frame_decoder(folder, config)
    session_path = folder / "forward_session.safetensors"
    session = _load(session_path) if session_path.is_file() else None
    cfg_scale = float(config.get("diffusion", {}).get("cfg", {}).get("scale", 0.0))
    text_checked = False
    for path in sorted(folder.glob("*.safetensors")):
        if path.name in ("dit_official.safetensors", "vae_official.safetensors"):
            continue
        kind = FILE_KINDS.get(path.name.split("_")[0])
        if kind is None:
            raise ValueError(f"No parity check knows {path.name}.")
        if only and kind not in only:
            continue
        if kind in ("forward", "sample", "text") and model is None:
            raise ValueError(f"{path.name} needs dit_official.safetensors in {folder}.")
        if kind in ("forward", "sample") and "diffusion" not in config:
            raise ValueError(
                f"{path.name} needs the official diffusion settings (CFG, shift) in {folder}/config.json."
            )
        if kind == "forward":
            checks += forward_checks(model, _load(path), path.stem, cfg_scale, session)
        elif kind == "sample":
            checks += sample_checks(model, _load(path), config, path.stem, decode_last_frame)
        elif kind == "text" and not text_checked:  # t5_encoder and text_path are checked together
            checks += text_checks(model, folder, config, session)
            text_checked = True
    if (folder / "vae_official.safetensors").is_file() and (not only or "vae" in only):
        from .conversion.vae import vae_parity_checks

        checks += [Check(f"vae {n}", a, e, tol) for n, a, e, tol in vae_parity_checks(folder)]
    return checks


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusers_vincie.parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="folder in the layout of the official fixtures")
    parser.add_argument("--only", default=None, help="comma-separated subset of: forward, sample, text, vae")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    try:
        checks = run_parity(args.folder, only)
    except (FileNotFoundError, ValueError) as err:
        print(f"ERROR {err}", file=sys.stderr)
        return 2
    for check in checks:
        print(check.line())
    failed = [c for c in checks if not c.passed]
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed or not checks else 0


if __name__ == "__main__":
    sys.exit(main())
