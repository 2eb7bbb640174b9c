"""Flow matching with the official VINCIE conventions: data at t = 0, noise at t = 1, velocity = noise - data.

``x_t = (1 - t) x0 + t noise`` and the model regresses ``v = noise - x0`` (the ``v_lerp`` loss of the official
config); training times are logit-normal (``t = sigmoid(N(mean, std))``, official ``logitnormal(0, 1)``) and the
transformer receives ``1000 t``.
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


__all__ = ["add_noise", "flow_velocity", "sample_logit_normal", "weighted_frame_mse"]
