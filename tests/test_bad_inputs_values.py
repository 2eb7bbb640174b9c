"""Values that used to become silent wrong results: every image dtype and layout follows one rule, embeddings,
masks and drags are checked before any work, each refusal naming the argument and the fix."""

import math

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_vincie.pipelines.image_processing import image_array, mask_to_image, to_rgb, transform_mask
from diffusers_vincie.testing import tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    p = tiny_pipeline(default_resolution=32)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    """A uint8 (H, W, 3) image with every value 0..255 present (not binary, not constant)."""
    return (np.arange(32 * 32 * 3).reshape(32, 32, 3) % 256).astype(np.uint8)


@pytest.fixture()
def no_forward(pipe):
    calls = []
    hooks = [pipe.transformer.register_forward_pre_hook(lambda *a: calls.append("transformer"))]
    hooks.append(pipe.vae.register_forward_pre_hook(lambda *a: calls.append("vae")))
    hooks.append(pipe.vae.encoder.register_forward_pre_hook(lambda *a: calls.append("vae")))
    yield calls
    for hook in hooks:
        hook.remove()
    assert not calls, f"{calls} ran before the bad input was refused"


# ----------------------------------------------------------------------------------------- the image rule


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda a: a, id="uint8"),
        pytest.param(lambda a: a.astype(np.int64), id="int64 0..255"),
        pytest.param(lambda a: a.astype(np.int16), id="int16 0..255"),
        pytest.param(lambda a: a.astype(np.uint32), id="uint32 0..255"),
        pytest.param(lambda a: a.astype(np.uint16) * 257, id="uint16 by its 0..65535 range"),
        pytest.param(lambda a: a.astype(np.float32) / 255, id="float32 0..1"),
        pytest.param(lambda a: a.astype(np.float64) / 255, id="float64 0..1"),
        pytest.param(lambda a: torch.from_numpy(a).permute(2, 0, 1).contiguous(), id="uint8 tensor (3, H, W)"),
        pytest.param(lambda a: torch.from_numpy(a).permute(2, 0, 1).float() / 255, id="float tensor (3, H, W)"),
        pytest.param(lambda a: (torch.from_numpy(a).permute(2, 0, 1).float() / 255).bfloat16(), id="bf16 tensor"),
    ],
)
def test_every_dtype_and_layout_gives_the_same_image(pixels, convert):
    converted = np.asarray(to_rgb(convert(pixels)))
    tolerance = 1 if "bfloat16" in str(getattr(convert(pixels), "dtype", "")) else 0
    assert np.abs(converted.astype(int) - pixels.astype(int)).max() <= tolerance
    assert len(np.unique(converted)) > 2, "the image became binary"


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda a: a.astype(np.float32), "divide by 255"),
        (lambda a: a.astype(np.float32) / 127.5 - 1, r"\(x \+ 1\) / 2"),
        (lambda a: a.astype(np.float32) / 255 * 1.5, "must be in \\[0, 1\\]"),
        (lambda a: a.astype(np.int64) * 4, "0..255"),
        (lambda a: a.astype(np.int32) - 128, "0..255"),
        (lambda a: a > 127, "dtype bool"),
        (lambda a: a.transpose(2, 0, 1).copy(), r"transpose\(1, 2, 0\)"),
        (lambda a: torch.from_numpy(a), r"permute\(2, 0, 1\)"),
        (lambda a: torch.empty(3, 32, 32, device="meta"), "meta tensor"),
        (lambda a: np.full((32, 32, 3), np.nan, np.float32), "NaN"),
        (lambda a: a.astype(np.complex64), "dtype complex64"),
        (lambda a: np.concatenate([a, a[..., :1]], -1), r"drop the alpha channel"),
    ],
)
def test_anything_else_is_a_clear_error_naming_the_argument(pixels, make, words):
    with pytest.raises((ValueError, TypeError), match=words) as error:
        to_rgb(make(pixels), "image[1]")
    assert "`image[1]`" in str(error.value)


def test_a_mode_i_image_with_negative_values_is_refused_not_wrapped():
    values = np.arange(-512, 512, dtype=np.int32).reshape(32, 32)
    with pytest.raises(ValueError, match="negative values"):
        to_rgb(PIL.Image.fromarray(values, mode="I"))
    positive = np.asarray(to_rgb(PIL.Image.fromarray(values + 512, mode="I")))[..., 0]
    assert np.all(np.diff(positive.ravel().astype(int)) >= 0), "a positive I image keeps its order"


def test_the_pipeline_and_the_session_share_the_rule_before_any_work(pipe, pixels, no_forward):
    with pytest.raises(ValueError, match="`image` is a float image .* divide by 255"):
        pipe(pixels.astype(np.float32), "add a red circle", num_inference_steps=1)
    with pytest.raises(ValueError, match=r"`image\[1\]` is a int64 image"):
        pipe([pixels, pixels.astype(np.int64) * 2], ["a", "b"], num_inference_steps=1)
    with pytest.raises(ValueError, match="`image` is a float image"):
        pipe.start_session(pixels.astype(np.float64))


def test_a_uint8_channels_first_tensor_edits_like_its_pil_image(pipe, pixels):
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()  # torchvision.io.read_image's layout
    run = dict(num_inference_steps=1, output_type="latent")
    from_tensor = pipe(tensor, "add a red circle", generator=torch.Generator().manual_seed(0), **run).images
    from_pil = pipe(
        PIL.Image.fromarray(pixels), "add a red circle", generator=torch.Generator().manual_seed(0), **run
    ).images
    torch.testing.assert_close(from_tensor, from_pil, rtol=0, atol=0)


def test_image_array_is_the_one_rule_for_a_grey_array():
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert image_array(grey).shape == (8, 8, 3) and (image_array(grey)[..., 2] == grey).all()


# ----------------------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize(
    "embeds, words",
    [
        (torch.full((5, 32), float("nan")), "NaN or Inf"),
        (torch.full((5, 32), float("inf")), "NaN or Inf"),
        (torch.zeros(5, 31), r"\(tokens, 32\).*text width"),
        (torch.zeros(32), r"\(tokens, 32\)"),
        (torch.zeros(1, 5, 32), r"\(tokens, 32\)"),
        (torch.zeros(5, 32, device="meta"), "meta tensor"),
        (torch.zeros(5, 32, dtype=torch.long), "floating point"),
        ([[0.0] * 32] * 5, "must be a torch tensor"),
    ],
)
@pytest.mark.parametrize("which", ["prompt_embeds", "negative_prompt_embeds"])
def test_bad_embeddings_are_named_before_the_image_is_encoded(pipe, pixels, no_forward, embeds, words, which):
    good = torch.zeros(5, 32)
    kwargs = dict(prompt_embeds=good, negative_prompt_embeds=good)
    kwargs[which] = embeds
    with pytest.raises((ValueError, TypeError), match=words) as error:
        pipe(pixels, num_inference_steps=1, **kwargs)
    assert str(error.value).startswith(f"`{which}")


def test_a_session_checks_embeddings_before_work(pipe, pixels):
    session = pipe.start_session(pixels)
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="`negative_prompt_embeds` contains NaN"):
            session.edit("a", negative_prompt_embeds=torch.full((3, 32), math.nan), num_inference_steps=1)
        with pytest.raises(ValueError, match="`prompt_embeds` contains NaN"):
            session.edit(prompt_embeds=torch.full((3, 32), math.inf), num_inference_steps=1)
    finally:
        hook.remove()
    assert not calls and not session.turns


# ----------------------------------------------------------------------------------------- masks and drags


def _square(size=32, box=(8, 8, 16, 16)) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[box[1] : box[3], box[0] : box[2]] = True
    return mask


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(translate=(1e6, 0)), ValueError, "entirely off the 32x32 image"),
        (dict(translate=(-40, 0)), ValueError, "entirely off"),
        (dict(translate=(math.nan, 0)), ValueError, r"`translate\[0\]` must be a finite number"),
        (dict(translate=(0, math.inf)), ValueError, r"`translate\[1\]` must be a finite number"),
        (dict(scale=math.inf), ValueError, "`scale` must be a finite number"),
        (dict(scale=0.0), ValueError, "`scale` must be > 0"),
        (dict(rotate=math.nan), ValueError, "`rotate` must be a finite number"),
        (dict(translate="ab"), TypeError, "`translate` must be a pair of numbers"),
        (dict(translate=("a", "b")), TypeError, r"`translate\[0\]` must be a number"),
        (dict(translate=5), TypeError, "`translate` must be a pair"),
        (dict(translate=(1, 2, 3)), TypeError, "`translate` must be a pair"),
        (dict(scale="2"), TypeError, "`scale` must be a number"),
        (dict(translate=torch.tensor([math.nan, 0.0])), ValueError, r"`translate\[0\]` must be a finite number"),
    ],
)
def test_bad_drags_are_refused_before_any_work(pipe, pixels, no_forward, kwargs, error, words):
    session = pipe.start_session(pixels)
    no_forward.clear()  # the session's source encoding is allowed; the drag itself must not start
    with pytest.raises(error, match=words):
        session.drag("move it", current_mask=_square(), num_inference_steps=1, **kwargs)
    assert not session.turns


def test_a_predicted_mask_dragged_off_the_image_stops_before_the_image_is_generated(pipe, pixels):
    session = pipe.start_session(pixels)
    frames = []
    hook = pipe.transformer.register_forward_pre_hook(lambda *a: frames.append(1))
    try:
        with pytest.raises(ValueError, match="empty|off the"):
            session.drag("move it", translate=(1e6, 0), num_inference_steps=1, guidance_scale=1.0)
    finally:
        hook.remove()
    assert len(frames) == 1, "only the current mask was predicted"
    assert not session.turns


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((32, 32), dtype=bool),
        np.zeros((32, 32), dtype=np.uint8),
        torch.zeros(32, 32),
        PIL.Image.new("L", (32, 32), 0),
    ],
    ids=["bool", "uint8", "tensor", "PIL"],
)
def test_an_all_zero_current_mask_is_an_error(pipe, pixels, no_forward, mask):
    session = pipe.start_session(pixels)
    no_forward.clear()
    with pytest.raises(ValueError, match="`current_mask` is empty"):
        session.edit("recolour", current_mask=mask, num_inference_steps=1)


def test_mask_dtypes_follow_the_rule():
    square = _square()
    for mask in (
        square,
        square.astype(np.int64),  # 0/1 integers mark the ones
        square.astype(np.uint8) * 255,
        square.astype(np.float32),
        torch.from_numpy(square),
    ):
        assert (np.asarray(mask_to_image(mask))[..., 0] > 127).sum() == square.sum()
    with pytest.raises(ValueError, match="`mask` is a float image"):
        mask_to_image(square.astype(np.float32) * 255)
    with pytest.raises(ValueError, match="`mask` contains NaN"):
        mask_to_image(np.full((32, 32), np.nan))


def test_a_partly_visible_drag_still_works():
    for translate in ((20, 0), np.array([20, 0]), torch.tensor([20.0, 0.0])):
        moved = transform_mask(mask_to_image(_square()), translate=translate)
        assert 0 < (np.asarray(moved)[..., 0] > 127).sum() < _square().sum()
