"""Flow matching with the official VINCIE conventions: data at t = 0, noise at t = 1, velocity = noise - data.

``x_t = (1 - t) x0 + t noise`` and the model regresses ``v = noise - x0`` (the ``v_lerp`` loss of the official
config); training times are logit-normal (``t = sigmoid(N(mean, std))``, official ``logitnormal(0, 1)``) and the
transformer receives ``1000 t``.

:func:`sample_timesteps` also offers distributions that train the high-noise end, where a sampler starting at
``t = 1`` decides the content of an edit (logit-normal(0, 1) puts only 0.16% of its mass above 0.95): ``uniform``,
SD3's ``mode`` sampling (heavy tails with a negative scale), and a time shift ``t' = s t / (1 + (s - 1) t)`` applied to any of them.
"""

from __future__ import annotations

from typing import Optional

import torch


def sample_logit_normal(
    shape: tuple[int, ...] | int,
    mean: float = 0.0,
    std: float = 1.0,
    generator: Optional[torch.Generator] = None,
    device=None,
) -> torch.Tensor:
    """Times ``t = sigmoid(N(mean, std))`` in (0, 1), float32.

    Args:
        shape: output shape.
        mean, std: of the normal before the sigmoid (official: 0, 1).
        generator: torch generator (on ``device``) for reproducible draws.
    """
    if std <= 0:
        raise ValueError(f"`std` of the logit-normal must be > 0, got {std}.")
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return torch.sigmoid(mean + std * torch.randn(shape, generator=generator, device=device))


TIMESTEP_SAMPLINGS: tuple[str, ...] = ("logit_normal", "uniform", "mode")


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """``s t / (1 + (s - 1) t)``: the static shift of ``FlowMatchEulerDiscreteScheduler``; ``s > 1`` moves mass to
    high noise (``s = 1`` is the identity)."""
    if shift <= 0:
        raise ValueError(f"`shift` must be > 0, got {shift}.")
    return shift * t / (1 + (shift - 1) * t)


def sample_timesteps(
    shape: tuple[int, ...] | int,
    sampling: str = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    mode_scale: float = -0.5,
    shift: float = 1.0,
    generator: Optional[torch.Generator] = None,
    device=None,
) -> torch.Tensor:
    """Training times in [0, 1] (float32) from one of :data:`TIMESTEP_SAMPLINGS`, then shifted by ``shift``.

    Args:
        shape: output shape.
        sampling: ``"logit_normal"`` (official; ``mean``, ``std``), ``"uniform"`` or ``"mode"`` (SD3's
            ``t = 1 - u - s (cos^2(pi u / 2) - 1 + u)`` with ``s = mode_scale`` in [-1, 2 / (pi - 2)], where the
            map is monotone: ``s < 0`` puts more mass at both ends than uniform, 0 is uniform, ``s > 0`` favours
            the middle).
        shift: time shift (1: none); ``shift = 3`` moves the median of logit-normal(0, 1) from 0.5 to 0.75.
        generator: torch generator (on ``device``) for reproducible draws.
    """
    if sampling == "logit_normal":
        t = sample_logit_normal(shape, mean, std, generator=generator, device=device)
    elif sampling in ("uniform", "mode"):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        t = torch.rand(shape, generator=generator, device=device)
        if sampling == "mode":
            if not -1.0 <= mode_scale <= 2 / (torch.pi - 2):
                raise ValueError(f"`mode_scale` must lie in [-1, {2 / (torch.pi - 2):.3f}], got {mode_scale}.")
            t = 1 - t - mode_scale * (torch.cos(torch.pi * t / 2) ** 2 - 1 + t)
    else:
        raise ValueError(f"Unknown timestep sampling {sampling!r}; choose from {TIMESTEP_SAMPLINGS}.")
    return shift_timesteps(t, shift).clamp(0.0, 1.0) if shift != 1.0 else t


def _broadcast_time(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t
    if t.shape[0] != like.shape[0]:
        raise ValueError(f"Got {t.shape[0]} times for {like.shape[0]} frames; give one time per frame or a scalar.")
    return t.view(-1, *([1] * (like.ndim - 1)))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t) x0 + t noise``; ``t`` is a scalar or one value per leading slice of ``x0``."""
    if noise.shape != x0.shape:
        raise ValueError(f"`noise` {tuple(noise.shape)} must have the shape of `x0` {tuple(x0.shape)}.")
    t = _broadcast_time(t, x0)
    return (1 - t) * x0 + t * noise


def flow_velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target ``noise - x0`` (the official model's output convention)."""
    return noise - x0


def weighted_frame_mse(
    prediction: torch.Tensor,
    target: torch.Tensor,
    loss_weight: torch.Tensor,
    pixels_per_frame: torch.Tensor,
) -> torch.Tensor:
    """Mean squared error per frame, averaged over frames with their loss weights (context frames weigh 0).

    Args:
        prediction, target: ``(sum F*h*w, C)`` packed velocities.
        loss_weight: ``(sum F,)`` weight of each frame.
        pixels_per_frame: ``(sum F,)`` latent pixels of each frame (``h * w``).

    Returns:
        Scalar float32 loss ``sum_f w_f mse_f / sum_f w_f``.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"Prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape.")
    squared = (prediction.float() - target.float()).pow(2).mean(-1)  # (sum F*h*w,)
    frame_of_pixel = torch.repeat_interleave(torch.arange(len(loss_weight), device=squared.device), pixels_per_frame)
    per_frame = torch.zeros(len(loss_weight), device=squared.device).index_add(0, frame_of_pixel, squared)
    per_frame = per_frame / pixels_per_frame.float()
    total_weight = loss_weight.float().sum()
    if total_weight <= 0:
        raise ValueError("The batch has no target frame (all loss weights are 0).")
    return (per_frame * loss_weight.float()).sum() / total_weight


__all__ = [
    "TIMESTEP_SAMPLINGS",
    "add_noise",
    "flow_velocity",
    "sample_logit_normal",
    "sample_timesteps",
    "shift_timesteps",
    "weighted_frame_mse",
]
