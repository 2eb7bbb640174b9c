"""Parity verifier: reproduces golden tensors of the official VINCIE code with this package's own code.

Usage::

    python -m diffusers_vincie.parity FOLDER [--only forward,sample,vae]

``FOLDER`` has the layout of the official fixtures (``config.json``, ``dit_official.safetensors``,
``forward_*.safetensors``, ``sample_*.safetensors``, ``vae_*.safetensors``; see the fixtures' README). The
official weights are converted with the package's converters and every stored output is recomputed from the
stored inputs: session assembly, transformer forwards (and per-block intermediates), the sampling loop with
classifier-free guidance, the timestep schedule and the VAE. One line per check, exit status 1 if any check
exceeds its tolerance or a file present in the folder has no check.
"""

from __future__ import annotations

import argparse
import json
import os
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
BF16_ATTENTION_TOL = 1e-2  # official bf16 q/k/v cast vs its emulation (fixture README: loose check)
SAMPLE_STEP_TOL = 1e-4
SAMPLE_FINAL_TOL = 1e-3


@dataclass
class Check:
    name: str
    actual: torch.Tensor
    expected: torch.Tensor
    tolerance: float

    @property
    def error(self) -> float:
        if self.actual.shape != self.expected.shape:
            return float("inf")
        return (self.actual.double() - self.expected.double()).abs().max().item() if self.expected.numel() else 0.0

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance

    def line(self) -> str:
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
        ]
        for i, block in enumerate(model.transformer_blocks):
            hooks.append(block.register_forward_hook(self._store_pair(f"inter.block{i}")))
        self.hooks = hooks

    def _store(self, name: str) -> Callable:
        return lambda module, args, output: self.values.__setitem__(name, output)

    def _store_pair(self, prefix: str) -> Callable:
        def hook(module, args, output):
            self.values[f"{prefix}.vid"], self.values[f"{prefix}.txt"] = output

        return hook

    def close(self) -> None:
        for h in self.hooks:
            h.remove()


def _forward_tol(t: dict) -> float:
    """The bf16-attention fixture's outputs come from the official bf16 q/k/v cast (checked with its emulation)."""
    return BF16_ATTENTION_TOL if "out.vid_sample_fp32_attention" in t else FORWARD_TOL


def _run(model: VincieTransformer, t: dict, txt_key: str = "dit.txt") -> torch.Tensor:
    shape_key = txt_key + "_shape"
    return model(t["dit.vid"], t["dit.vid_shape"], t[txt_key], t[shape_key][:, 0], t["dit.timestep"]).sample


def _assemble_sample(model: VincieTransformer, t: dict, prefix: str) -> tuple[PackedText, torch.Tensor, list[Check]]:
    """Rebuilds one sample's session text and condition from its pre-assembly pieces (checked exactly)."""
    segments = select_valid_tokens(t[f"{prefix}text_embeds"], t[f"{prefix}text_masks"])
    text = session_text(segments, t[f"{prefix}turn_ids"].tolist())
    cond = build_condition(t[f"{prefix}image_latents"])
    checks = []
    if f"{prefix}cond" in t:
        checks.append(Check(f"assembly {prefix}cond", cond, t[f"{prefix}cond"], 0.0))
    if f"{prefix}turn_embeddings" in t:
        turns = model.turn_embedding(t[f"{prefix}turn_ids"])
        checks.append(Check(f"assembly {prefix}turn_embeddings", turns, t[f"{prefix}turn_embeddings"], 0.0))
    return text, cond, checks


def forward_checks(model: VincieTransformer, t: dict, name: str) -> Iterator[Check]:
    with torch.no_grad():
        samples = sorted({k.split(".")[1] for k in t if k.startswith("pre.s")})
        prefixes = [f"pre.{s}." for s in samples] if samples else (["pre."] if "pre.text_embeds" in t else [])
        texts, videos = [], []
        for prefix in prefixes:
            text, cond, checks = _assemble_sample(model, t, prefix)
            yield from checks
            texts.append(text)
            x_t = t[f"{prefix}x_t"]
            if f"{prefix}x0" in t:
                tt = t["dit.timestep"][len(videos)] / 1000.0
                rebuilt = (1 - tt) * t[f"{prefix}x0"] + tt * t[f"{prefix}noise"]
                yield Check(f"{name} {prefix}x_t", rebuilt, x_t, 1e-6)
            videos.append(torch.cat([x_t, cond], -1))
        if prefixes:
            video, shapes, _, _ = pack_sessions(videos, [x.states for x in texts])
            text, turn_ids, lengths = pack_texts(texts)
            yield Check(f"{name} packed video", video, t["dit.vid"], 0.0)
            yield Check(f"{name} video shapes", shapes.float(), t["dit.vid_shape"].float(), 0.0)
            yield Check(f"{name} packed text", model.fuse_turn_tokens(text, turn_ids), t["dit.txt"], 0.0)
            yield Check(f"{name} text lengths", lengths.float(), t["dit.txt_shape"][:, 0].float(), 0.0)
            # the model fuses the turn tokens inside forward(): its output from the assembled inputs is the official one
            assembled = model(video, shapes, text, lengths, t["dit.timestep"], text_turn_ids=turn_ids).sample
            yield Check(f"{name} out from assembled inputs", assembled, t["out.vid_sample"], _forward_tol(t))
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
                cfg = neg + 7.5 * (pos - neg)
                yield Check(f"{name} out_cfg", cfg, t["out.vid_sample_cfg"], FORWARD_TOL)


# =====================================================================================================
#                                         Sampling + schedule
# =====================================================================================================


def sample_checks(model: VincieTransformer, t: dict, config: dict, name: str) -> Iterator[Check]:
    from .pipelines.sampling import FullAttentionVelocity, official_scheduler, run_sampler, set_trailing_timesteps

    sampling = config.get("diffusion", {}).get("timesteps", {}).get("sampling", {})
    shift = float(sampling.get("shift", 12.0))
    if "timesteps_50_shift12" in t:
        timesteps = set_trailing_timesteps(official_scheduler(shift=12.0), 50)
        yield Check(f"{name} timesteps 50 shift 12", timesteps.float(), t["timesteps_50_shift12"], 1e-3)
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


# =====================================================================================================
#                                                Driver
# =====================================================================================================


def _load(path: Path) -> dict[str, torch.Tensor]:
    return load_file(os.fspath(path))


def run_parity(folder: str | os.PathLike, only: Optional[set[str]] = None) -> list[Check]:
    """Runs every check the folder supports; raises ``ValueError`` for files that have no check."""
    folder = Path(folder)
    if not (folder / "dit_official.safetensors").is_file() and not (folder / "vae_official.safetensors").is_file():
        raise FileNotFoundError(f"{folder} holds neither dit_official.safetensors nor vae_official.safetensors.")
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    checks: list[Check] = []
    model = None
    if (folder / "dit_official.safetensors").is_file() and (not only or only & {"forward", "sample"}):
        model = load_official_dit(_load(folder / "dit_official.safetensors"))
    for path in sorted(folder.glob("*.safetensors")):
        kind = path.name.split("_")[0]
        if path.name in ("dit_official.safetensors", "vae_official.safetensors") or (only and kind not in only):
            continue
        if kind in ("forward", "sample") and model is None:
            raise ValueError(f"{path.name} needs dit_official.safetensors in {folder}.")
        if kind == "forward":
            checks += forward_checks(model, _load(path), path.stem)
        elif kind == "sample":
            checks += sample_checks(model, _load(path), config, path.stem)
        elif kind == "vae":
            continue  # all vae_* files are checked together below
        else:
            raise ValueError(f"No parity check knows {path.name}.")
    if (folder / "vae_official.safetensors").is_file() and (not only or "vae" in only):
        from .conversion.vae import vae_parity_checks

        checks += [Check(f"vae {n}", a, e, tol) for n, a, e, tol in vae_parity_checks(folder)]
    return checks


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusers_vincie.parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="folder in the layout of the official fixtures")
    parser.add_argument("--only", default=None, help="comma-separated subset of: forward, sample, vae")
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
