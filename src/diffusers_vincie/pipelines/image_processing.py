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


HALF_STEP = 0.5 / 255  # floats this far outside [0, 1] still round to a valid 8-bit value


def image_array(image, name: str = "image") -> np.ndarray:
    """The one rule for array and tensor images: returns ``(H, W, 3)`` uint8 values, or a clear error.

    * layout: numpy ``(H, W, 3)`` (or ``(H, W)`` grey); torch ``(3, H, W)`` (or ``(1, H, W)`` grey), the
      channels-first layout of ``torchvision.io.read_image`` and of diffusers' "pt" images;
    * uint8: 0..255 as they are; uint16: 16-bit images, 0..65535 scaled to 0..255;
    * other integer types (int8 ... int64, uint32, uint64): 8-bit values, each within 0..255;
    * floats (bfloat16 ... float64): 0..1, finite; values up to half an 8-bit step outside are rounding noise;
      0..255 floats and [-1, 1] floats are refused with the conversion that fixes them;
    * bool, complex and object arrays are refused.
    """
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            hint = " (permute an (H, W, 3) tensor with `.permute(2, 0, 1)`)" if image.ndim == 3 else ""
            raise ValueError(f"`{name}` tensor must be (3, H, W); got {tuple(image.shape)}{hint}.")
        if image.device.type == "meta":
            raise ValueError(f"`{name}` is a meta tensor without values; give a tensor with data.")
        values = image.detach().cpu()
        values = (values.float() if values.dtype == torch.bfloat16 else values).permute(1, 2, 0).numpy()
    elif isinstance(image, np.ndarray):
        values = image
        if values.ndim == 3 and values.shape[-1] == 1:
            values = values[..., 0]
        if values.ndim not in (2, 3) or (values.ndim == 3 and values.shape[-1] != 3):
            hint = ""
            if values.ndim == 3 and values.shape[-1] == 4:
                hint = " (drop the alpha channel with `[..., :3]`, or give a PIL RGBA image: composited over white)"
            elif values.ndim == 3 and values.shape[0] in (1, 3):
                hint = " (transpose a (3, H, W) array with `.transpose(1, 2, 0)`)"
            raise ValueError(f"`{name}` array must be (H, W, 3) or (H, W); got {values.shape}{hint}.")
    else:
        raise TypeError(f"`{name}` must be a PIL image, a numpy array or a tensor; got {type(image).__name__}.")
    if values.ndim == 2:
        values = np.repeat(values.reshape(values.shape[0], values.shape[1], 1), 3, axis=-1)
    if values.size == 0:
        raise ValueError(f"`{name}` is empty ({values.shape}).")
    kind = values.dtype.kind
    if values.dtype == np.uint8:
        return np.ascontiguousarray(values)
    if values.dtype == np.uint16:
        return (values.astype(np.float64) / 65535 * 255).round().astype(np.uint8)
    if kind in "iu":
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"`{name}` is a {values.dtype} image with values in [{low}, {high}]; integer images other than "
                "uint16 must hold 8-bit values in 0..255 (convert with `.astype(np.uint8)` after scaling)."
            )
        return values.astype(np.uint8)
    if kind == "f":
        values = values.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"`{name}` contains NaN or Inf values; give finite pixel values.")
        low, high = float(values.min()), float(values.max())
        if low < -HALF_STEP or high > 1 + HALF_STEP:
            if low >= 0 and high <= 255:
                fix = "it looks like 0..255 values: divide by 255"
            elif low >= -1 - HALF_STEP and high <= 1 + HALF_STEP:
                fix = "it looks like [-1, 1] values: map them with `(x + 1) / 2`"
            else:
                fix = "rescale it"
            raise ValueError(
                f"`{name}` is a float image with values in [{low:g}, {high:g}]; float images must be in [0, 1] "
                f"({fix})."
            )
        return (values.clip(0, 1) * 255).round().astype(np.uint8)
    raise ValueError(f"`{name}` has dtype {values.dtype}; give uint8 (0..255) or float (0..1) values.")


def to_rgb(image, name: str = "image") -> PIL.Image.Image:
    """Returns an RGB PIL image; documented conversions for other inputs, clear errors for the rest.

    * RGBA / LA / PA: alpha-composited over white;
    * L, 1, P, CMYK, YCbCr, LAB, HSV: converted to RGB;
    * 16/32-bit integer ("I;16", "I"): scaled to 8 bit (0..65535 for "I;16", the image's own maximum for
      "I"; an "I" image with negative values is refused);
    * numpy arrays and torch tensors: by `image_array`;
    * anything else (float "F" images, other shapes) is refused.
    """
    if isinstance(image, (np.ndarray, torch.Tensor)):
        image = PIL.Image.fromarray(image_array(image, name))
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
        if array.min() < 0:
            raise ValueError(
                f"`{name}` is a 32-bit integer image with negative values (down to {array.min():g}); give an "
                "image with values >= 0 (e.g. shift and scale it to 8 bit first)."
            )
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


def preprocess_mask(
    mask: PIL.Image.Image, resolution: int, multiple: int, reference_size: Optional[tuple[int, int]] = None
) -> torch.Tensor:
    """RGB mask image -> ``(3, H, W)`` binary tensor: +1 inside the region, -1 outside, as training mask frames are.

    The mask goes through the images' resize/crop (`preprocess`), then every pixel is set to the side its resized
    value falls on: training shows the model only binary masks, so the soft edges of a resized mask would be
    values it never saw.
    """
    pixels = preprocess(mask, resolution, multiple, reference_size)
    return torch.where(pixels > 0, 1.0, -1.0)


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
    """A mask -> the paper's RGB mask image (white region on black).

    A PIL image counts its pixels brighter than 127 (of its grey version); a bool array (or tensor) its true
    values; an integer array holding only 0 and 1 its ones; any other array or tensor is read by the image rule
    (`image_array`: uint8 0..255, float 0..1, ...) and counts its pixels above half (of their mean over channels).
    """
    if isinstance(mask, PIL.Image.Image):
        array = np.asarray(mask.convert("L")) > 127
    elif isinstance(mask, (np.ndarray, torch.Tensor)):
        values = mask
        if isinstance(values, torch.Tensor):
            if values.device.type == "meta":
                raise ValueError(f"`{name}` is a meta tensor without values; give a tensor with data.")
            values = values.detach().cpu()
            values = values.permute(1, 2, 0) if values.ndim == 3 and values.shape[0] in (1, 3) else values
            values = (values.float() if values.dtype == torch.bfloat16 else values).numpy()
        if values.ndim not in (2, 3) or (values.ndim == 3 and values.shape[-1] not in (1, 3)):
            raise ValueError(f"`{name}` must be a 2-D mask or an image; got shape {values.shape}.")
        if values.dtype == np.bool_:
            array = values if values.ndim == 2 else values.any(-1)
        elif values.dtype.kind in "iu" and values.size and values.min() >= 0 and values.max() <= 1:
            array = (values if values.ndim == 2 else values.max(-1)) > 0
        else:
            array = image_array(values[..., 0] if values.ndim == 3 and values.shape[-1] == 1 else values, name)
            array = array.mean(-1) > 127
    else:
        raise TypeError(
            f"`{name}` must be a mask image, a 2-D array or tensor, 'predict' or a function; got {type(mask).__name__}."
        )
    image = PIL.Image.fromarray((array * 255).astype(np.uint8)).convert("RGB")
    if size is not None and image.size != tuple(size):
        raise ValueError(f"`{name}` is {image.size[0]}x{image.size[1]} but the session image is {size[0]}x{size[1]}.")
    if not array.any():
        raise ValueError(
            f"`{name}` is empty: it marks no pixel of the image. Paint the region to edit (or leave `{name}` out)."
        )
    return image


def check_drag(translate, scale, rotate) -> tuple[tuple[float, float], float, float]:
    """The transform of a drag: ``translate`` a pair of finite pixel offsets, ``scale`` finite and > 0,
    ``rotate`` finite degrees."""
    pair = translate if isinstance(translate, (tuple, list, np.ndarray, torch.Tensor)) else None
    if pair is None or len(pair) != 2:
        raise TypeError(f"`translate` must be a pair of numbers (dx, dy) in pixels; got {translate!r}.")
    numbers = []
    for name, value in (("translate[0]", pair[0]), ("translate[1]", pair[1]), ("scale", scale), ("rotate", rotate)):
        if isinstance(value, np.generic) or (isinstance(value, torch.Tensor) and value.numel() == 1):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"`{name}` must be a number; got {type(value).__name__} {value!r}.")
        if not math.isfinite(value):
            raise ValueError(f"`{name}` must be a finite number; got {value}.")
        numbers.append(float(value))
    if numbers[2] <= 0:
        raise ValueError(f"`scale` must be > 0, got {numbers[2]}.")
    return (numbers[0], numbers[1]), numbers[2], numbers[3]


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
    translate, scale, rotate = check_drag(translate, scale, rotate)
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
    if not (np.asarray(moved) > 127).any():
        raise ValueError(
            f"The drag (translate={translate}, scale={scale:g}, rotate={rotate:g}) moves the region entirely off the "
            f"{mask.size[0]}x{mask.size[1]} image (or shrinks it to nothing); keep part of it inside the image."
        )
    return moved.convert("RGB")
