"""Image I/O of VINCIE sessions: input conversion, the official resize/crop, post-processing and RoE masks."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

MAX_INPUT_PIXELS = 64_000_000  # refuse decompression-bomb sized inputs clearly instead of running out of memory
MIN_INPUT_SIDE = 8


# =====================================================================================================
#                                         Input conversion
# =====================================================================================================


def to_rgb(image, name: str = "image") -> PIL.Image.Image:
    """Returns an RGB PIL image; documented conversions for other inputs, clear errors for the rest.

    * RGBA / LA / PA: alpha-composited over white;
    * L, 1, P, CMYK, YCbCr, LAB, HSV: converted to RGB;
    * 16/32-bit integer ("I;16", "I"): scaled to 8 bit (by the image's own maximum for "I");
    * numpy ``(H, W, 3)`` uint8 or float in [0, 1] and torch ``(3, H, W)`` in [0, 1]: converted;
    * anything else (float "F" images, other shapes) is refused.
    """
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"`{name}` tensor must be (3, H, W) in [0, 1]; got {tuple(image.shape)}.")
        image = image.permute(1, 2, 0).detach().cpu().float().numpy()
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"`{name}` array must be (H, W, 3); got {image.shape}.")
        if image.dtype != np.uint8:
            image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        image = PIL.Image.fromarray(image)
    if not isinstance(image, PIL.Image.Image):
        raise TypeError(f"`{name}` must be a PIL image, a numpy array or a tensor; got {type(image).__name__}.")
    w, h = image.size
    if min(w, h) < MIN_INPUT_SIDE or w * h > MAX_INPUT_PIXELS:
        raise ValueError(
            f"`{name}` is {w}x{h}: sides must be >= {MIN_INPUT_SIDE} px and the area <= {MAX_INPUT_PIXELS:,} pixels; "
            "resize it first."
        )
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        return PIL.Image.fromarray((array / peak * 255).round().astype(np.uint8)).convert("RGB")
    if image.mode in ("L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    raise ValueError(f"`{name}` has unsupported PIL mode {image.mode!r}; convert it to RGB first.")


# =====================================================================================================
#                                   Official resize / crop
# =====================================================================================================


def area_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """Size with area ``resolution**2`` and the same aspect ratio (Python banker's rounding, as official)."""
    scale = math.sqrt(resolution * resolution / (height * width))
    return round(height * scale), round(width * scale)


def preprocess(
    image: PIL.Image.Image, resolution: int, multiple: int, reference_size: Optional[tuple[int, int]] = None
):
    """PIL image -> ``(3, H, W)`` float tensor in [-1, 1], official path.

    Later session images are first resized (PIL bicubic) to the first image's size ``reference_size`` (W, H);
    then area resize to ``resolution**2`` (bicubic, antialiased, no clamping) and a center crop to multiples of
    ``multiple`` (VAE factor x patch size).
    """
    if reference_size is not None and image.size != tuple(reference_size):
        image = image.resize(tuple(reference_size), PIL.Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    h, w = area_size(x.shape[1], x.shape[2], resolution)
    x = F.interpolate(x[None], size=(h, w), mode="bicubic", antialias=True, align_corners=False)[0]
    th, tw = h - h % multiple, w - w % multiple
    if th == 0 or tw == 0:
        raise ValueError(
            f"Image of size {image.size} at resolution {resolution} crops to nothing (multiple of {multiple}); "
            "use a less extreme aspect ratio or a larger `resolution`."
        )
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return x[:, top : top + th, left : left + tw] * 2.0 - 1.0


def postprocess_official(pixels: torch.Tensor) -> PIL.Image.Image:
    """Official post-processing in bfloat16 with truncation: clamp, *0.5 + 0.5, *255, uint8."""
    x = pixels.to(torch.bfloat16).clamp(-1, 1).mul(0.5).add(0.5).mul(255).to(torch.uint8)
    return PIL.Image.fromarray(x.permute(1, 2, 0).cpu().numpy())


def postprocess(pixels: torch.Tensor, output_type: str):
    """``(3, H, W)`` in [-1, 1] -> "pil" | "np" (H, W, 3 float [0, 1]) | "pt" (3, H, W float [0, 1])."""
    x = (pixels.float() / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return x.cpu()
    array = x.permute(1, 2, 0).cpu().numpy()
    if output_type == "np":
        return array
    return PIL.Image.fromarray((array * 255).round().astype(np.uint8))


# =====================================================================================================
#                                         Region-of-editing masks
# =====================================================================================================


def mask_to_image(mask, size: Optional[tuple[int, int]] = None, name: str = "mask") -> PIL.Image.Image:
    """A mask (bool/0-1 array, L or RGB image) -> the paper's RGB mask image (white region on black)."""
    if isinstance(mask, PIL.Image.Image):
        array = np.asarray(mask.convert("L")) > 127
    else:
        array = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)
        if array.ndim == 3:
            array = array.mean(-1)
        if array.ndim != 2:
            raise ValueError(f"`{name}` must be a 2-D mask or an image; got shape {array.shape}.")
        array = array > (127 if array.dtype == np.uint8 else 0.5)
    image = PIL.Image.fromarray((array * 255).astype(np.uint8)).convert("RGB")
    if size is not None and image.size != tuple(size):
        raise ValueError(f"`{name}` is {image.size[0]}x{image.size[1]} but the session image is {size[0]}x{size[1]}.")
    return image


def transform_mask(
    mask: PIL.Image.Image,
    translate: Sequence[float] = (0.0, 0.0),
    scale: float = 1.0,
    rotate: float = 0.0,
) -> PIL.Image.Image:
    """Drag editing: moves/scales/rotates the region of a mask about its centroid.

    Args:
        mask: RGB mask image.
        translate: ``(dx, dy)`` in pixels (positive = right / down).
        scale: region scale factor (> 0).
        rotate: counter-clockwise angle in degrees.
    """
    if scale <= 0:
        raise ValueError(f"`scale` must be > 0, got {scale}.")
    array = np.asarray(mask.convert("L")) > 127
    if not array.any():
        raise ValueError("The mask to drag is empty: there is no region to move.")
    ys, xs = np.nonzero(array)
    cx, cy = xs.mean(), ys.mean()
    angle = math.radians(rotate)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    # inverse map: output (x, y) -> input pixel, for PIL's affine transform
    dx, dy = translate
    a, b = cos, -sin
    d, e = sin, cos
    c = cx - a * (cx + dx) - b * (cy + dy)
    f = cy - d * (cx + dx) - e * (cy + dy)
    moved = mask.convert("L").transform(mask.size, PIL.Image.AFFINE, (a, b, c, d, e, f), resample=PIL.Image.NEAREST)
    return moved.convert("RGB")
