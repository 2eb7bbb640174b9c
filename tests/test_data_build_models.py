"""Model back-ends of the build pipeline with tiny random-weight models built from configs (no Hub access).

Random weights produce garbage: these tests check the plumbing (chat template, generation, detection,
segmentation, fusion into masks) and that garbage is rejected cleanly, never that the models are right.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertTokenizerFast,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessorPil,
    GroundingDinoProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    Sam2Config,
    Sam2HieraDetConfig,
    Sam2Model,
    Sam2Processor,
    Sam2VisionConfig,
    SwinConfig,
)
from transformers.image_processing_utils import BatchFeature, ImageProcessingMixin

from diffusers_vincie.data.schema import mask_to_array
from diffusers_vincie.data.shapes.video import render_video
from diffusers_vincie.data.shapes.world import ShapesWorld
from diffusers_vincie.data.video.annotate import (
    AnnotationRejected,
    Transition,
    VLMAnnotator,
    parse_annotation,
)
from diffusers_vincie.data.video.build import SamplingConfig, build_sessions, read_manifest, sessions_from_video
from diffusers_vincie.data.video.frames import SampledFrame
from diffusers_vincie.data.video.regions import RegionMasker

VALID_ANSWER = {
    "source_description": "a red circle on a light background",
    "target_description": "a blue circle on a light background",
    "differences": ["the circle turned blue"],
    "instruction": "make the red circle blue",
    "source_objects": ["red circle"],
    "target_objects": ["blue circle"],
    "camera_motion": "none",
}

# ================================================================================================
# Parsing
# ================================================================================================


def test_parse_annotation_accepts_thinking_then_json():
    text = "1. The source shows {a circle}.\n```json\n" + json.dumps(VALID_ANSWER) + "\n```"
    annotation = parse_annotation(text)
    assert annotation.instruction == "make the red circle blue"
    assert (annotation.source_objects, annotation.target_objects) == (["red circle"], ["blue circle"])
    assert annotation.camera_motion == "static"  # "none" normalized
    assert annotation.details["differences"] == ["the circle turned blue"]
    single = parse_annotation(
        json.dumps({**VALID_ANSWER, "source_objects": "red circle", "camera_motion": "Pan Left"})
    )
    assert single.source_objects == ["red circle"] and single.camera_motion == "pan left"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("the red circle became blue", "no JSON object"),
        ('{"instruction": "make it blue"', "no JSON object"),  # truncated generation
        (json.dumps({k: v for k, v in VALID_ANSWER.items() if k != "camera_motion"}), "missing key"),
        (json.dumps({**VALID_ANSWER, "instruction": "  "}), "non-empty"),
        (json.dumps({**VALID_ANSWER, "target_objects": [1, 2]}), "list of strings"),
        (json.dumps({**VALID_ANSWER, "camera_motion": None}), "camera_motion"),
    ],
)
def test_parse_annotation_rejects_malformed_output(text, reason):
    with pytest.raises(AnnotationRejected, match=reason):
        parse_annotation(text)


# ================================================================================================
# Tiny models built in code
# ================================================================================================

SPECIAL_TOKENS = [
    "<unk>",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2-VL processor without the video processor (it needs torchvision, which this environment lacks)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


@pytest.fixture(scope="module")
def tiny_vlm():
    words = ["{", "}", ":", ",", "[", "]", '"instruction"', "red", "circle", "blue", "static"] + [
        f"w{i}" for i in range(40)
    ]
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[2:],
    )
    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": 28 * 28, "longest_edge": 112 * 112})
    processor = ImageOnlyQwen2VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    text_config = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        max_position_embeddings=512,
        bos_token_id=vocab["<|endoftext|>"],
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    vision_config = dict(
        depth=1,
        embed_dim=32,
        hidden_size=32,
        num_heads=2,
        mlp_ratio=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_chans=3,
    )
    config = Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    torch.manual_seed(0)
    return Qwen2VLForConditionalGeneration(config).eval(), processor


class TinySam2ImageProcessor(ImageProcessingMixin):
    """Stands in for ``Sam2ImageProcessor`` (torchvision-only): square resize + ImageNet normalization."""

    model_input_names = ["pixel_values"]

    def __init__(self, side: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.size = {"height": side, "width": side}

    def __call__(self, images, segmentation_maps=None, return_tensors=None, **kwargs):
        images = images if isinstance(images, list) else [images]
        side = self.size["height"]
        pixels = np.stack(
            [np.asarray(i.convert("RGB").resize((side, side), Image.BILINEAR), np.float32) / 255 for i in images]
        )
        pixels = (pixels - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
        data = {"pixel_values": pixels.transpose(0, 3, 1, 2), "original_sizes": [[i.height, i.width] for i in images]}
        return BatchFeature(data, tensor_type=return_tensors)

    def post_process_masks(self, masks, original_sizes, mask_threshold=0.0, binarize=True, *args, **kwargs):
        resized = [
            F.interpolate(m.float(), [int(s) for s in size], mode="bilinear") for m, size in zip(masks, original_sizes)
        ]
        return [m > mask_threshold if binarize else m for m in resized]


@pytest.fixture(scope="module")
def tiny_region_masker(tmp_path_factory):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "the", "red", "blue", "green", "circle", "square"]
    vocab_file = tmp_path_factory.mktemp("bert") / "vocab.txt"
    vocab_file.write_text("\n".join(words))
    detector_processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(size={"shortest_edge": 128, "longest_edge": 128}),
        tokenizer=BertTokenizerFast(vocab_file=str(vocab_file)),
    )
    detector_config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            image_size=128,
            patch_size=4,
            embed_dim=8,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1],
            window_size=2,
            out_features=["stage2", "stage3", "stage4"],
        ),
        text_config=BertConfig(
            vocab_size=len(words),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
        ),
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=10,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=32,
    )
    segmenter_config = Sam2Config(
        vision_config=Sam2VisionConfig(
            backbone_config=Sam2HieraDetConfig(
                hidden_size=8,
                image_size=[64, 64],
                blocks_per_stage=[1, 1, 2, 1],
                embed_dim_per_stage=[8, 16, 32, 64],
                num_attention_heads_per_stage=[1, 1, 1, 1],
                window_size_per_stage=[2, 2, 2, 1],
                global_attention_blocks=[3],
                window_positional_embedding_background_size=[2, 2],
            ),
            backbone_channel_list=[64, 32, 16, 8],
            backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]],
            fpn_hidden_size=16,
        ),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(
            hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=16
        ),
    )
    torch.manual_seed(0)
    return RegionMasker(
        GroundingDinoForObjectDetection(detector_config).eval(),
        detector_processor,
        Sam2Model(segmenter_config).eval(),
        Sam2Processor(image_processor=TinySam2ImageProcessor()),
        box_threshold=0.0,
        text_threshold=0.0,  # random scores: keep every box so SAM2 really runs
        detector_id="tiny-grounding-dino",
        segmenter_id="tiny-sam2",
    )


def make_transition(size: int = 64) -> Transition:
    rng = np.random.default_rng(0)
    frames = [
        SampledFrame(Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)), t, int(t * 8))
        for t in (0.5, 1.5)
    ]
    return Transition("unused.mp4", "clip", frames[0], frames[1])


def answer_from_call(processor, monkeypatch, valid_from: int, answer: dict = VALID_ANSWER) -> list[int]:
    """Makes decoding return the model's real (garbage) text before call ``valid_from``, then ``answer`` for
    every row; returns the batch size of each decode call."""
    real_decode, calls = processor.batch_decode, []

    def decode(token_ids, **kwargs):
        calls.append(len(token_ids))
        texts = real_decode(token_ids, **kwargs)
        return texts if len(calls) < valid_from else [json.dumps(answer)] * len(texts)

    monkeypatch.setattr(processor, "batch_decode", decode)
    return calls


# ================================================================================================
# VLM annotator
# ================================================================================================


def test_vlm_garbage_is_retried_then_rejected_with_a_logged_reason(tiny_vlm, caplog):
    model, processor = tiny_vlm
    annotator = VLMAnnotator(model, processor, model_id="tiny-qwen2-vl", max_attempts=3, max_new_tokens=8)
    calls = []
    original_generate = model.generate

    def counting_generate(**kwargs):
        calls.append(kwargs["do_sample"])
        return original_generate(**kwargs)

    model.generate = counting_generate
    try:
        with (
            caplog.at_level(logging.INFO, logger="diffusers_vincie.data.video.annotate"),
            pytest.raises(AnnotationRejected, match="after 3 attempt"),
        ):
            annotator.annotate(make_transition())
    finally:
        del model.generate
    assert calls == [False, True, True]  # greedy first, sampled retries
    assert sum("rejected transition clip" in r.message for r in caplog.records if r.levelno == logging.WARNING) == 1
    assert annotator.metadata() == {"name": "vlm", "model": "tiny-qwen2-vl", "prompt_version": "vincie-cot-v1"}


def test_vlm_valid_answer_after_a_retry_is_accepted(tiny_vlm, monkeypatch):
    model, processor = tiny_vlm
    calls = answer_from_call(processor, monkeypatch, valid_from=2)
    annotation = VLMAnnotator(model, processor, max_attempts=3, max_new_tokens=8).annotate(make_transition())
    assert calls == [1, 1] and annotation.instruction == "make the red circle blue"
    assert annotation.details["attempts"] == 2 and annotation.source_mask is None


def test_vlm_batches_transitions_and_retries_only_the_failed_ones(tiny_vlm, monkeypatch):
    model, processor = tiny_vlm
    garbage, valid = "{not json", json.dumps(VALID_ANSWER)
    answers = iter([[garbage, valid], [garbage], [valid, valid]])  # per generate call
    batch_sizes = []
    monkeypatch.setattr(processor, "batch_decode", lambda ids, **kwargs: batch_sizes.append(len(ids)) or next(answers))
    annotator = VLMAnnotator(model, processor, max_attempts=2, max_new_tokens=4, batch_size=2)
    # frames of different sizes give prompts of different lengths: the batch is really (left-)padded
    results = annotator.annotate_many([make_transition(), make_transition(112), make_transition()])
    assert batch_sizes == [2, 1, 2]  # attempt 1: transitions 0-1, then 2; attempt 2: the failed 0 and 2
    assert [r.details["attempts"] for r in results] == [2, 1, 2]
    assert processor.tokenizer.padding_side == "left"


def test_vlm_annotator_rejects_bad_arguments(tiny_vlm):
    with pytest.raises(ValueError, match="max_attempts"):
        VLMAnnotator(*tiny_vlm, max_attempts=0)
    with pytest.raises(ValueError, match="batch_size"):
        VLMAnnotator(*tiny_vlm, batch_size=0)


# ================================================================================================
# Regions
# ================================================================================================


def test_region_masker_fuses_sam2_masks_of_grounded_boxes(tiny_region_masker):
    image = make_transition().source.image.resize((80, 48))
    boxes = tiny_region_masker.boxes(image, ["the red circle", "a blue square."])
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and 1 <= len(boxes) <= tiny_region_masker.max_boxes
    assert (boxes[:, 2] - boxes[:, 0] >= 1).all() and (boxes[:, [0, 2]] <= 80).all() and (boxes[:, [1, 3]] <= 48).all()
    mask = tiny_region_masker.mask(image, ["the red circle", "a blue square."])
    assert mask.shape == (48, 80) and mask.dtype == bool
    assert np.array_equal(mask, tiny_region_masker.segment(image, boxes))  # union of the per-box masks
    assert np.array_equal(mask, mask | tiny_region_masker.segment(image, boxes[:1]))
    empty = tiny_region_masker.mask(image, ["", " . "])
    assert empty.shape == (48, 80) and not empty.any()
    with pytest.raises(ValueError, match="box_threshold"):
        RegionMasker(None, None, None, None, box_threshold=2.0)


# ================================================================================================
# End to end: VLM + regions inside the build
# ================================================================================================


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model_videos")
    world = ShapesWorld(resolution=64)
    for seed in range(2):
        render_video(world, world.sample_session(seed, num_turns=2), folder / f"clip{seed}.mp4", fps=8)
    (folder / "corrupt.mp4").write_bytes(b"\x00\x01 not a video" * 30)
    return folder


def test_build_with_garbage_vlm_rejects_every_transition_without_crashing(
    tiny_vlm, tiny_region_masker, two_videos, tmp_path
):
    annotator = VLMAnnotator(*tiny_vlm, max_attempts=2, max_new_tokens=6)
    config = SamplingConfig(strategy="equal_interval", interval=1.0)
    summary = build_sessions(
        [two_videos], tmp_path / "out", annotator, config=config, region_masker=tiny_region_masker
    )
    # a video none of whose transitions could be annotated is a reject (retried next run), like the unreadable one
    assert (summary.videos, summary.rejected_videos, summary.sessions) == (3, 3, 0)
    manifest = read_manifest(tmp_path / "out")
    assert [manifest[f"clip{i}"]["rejected_transitions"] for i in range(2)] == [2, 2]
    assert all(manifest[name]["status"] == "rejected" for name in ("clip0", "clip1", "corrupt"))
    assert "no transition could be annotated" in manifest["clip0"]["reason"]


def test_build_with_vlm_and_regions_produces_sessions(tiny_vlm, tiny_region_masker, two_videos, monkeypatch):
    model, processor = tiny_vlm
    calls = answer_from_call(processor, monkeypatch, valid_from=1)
    annotator = VLMAnnotator(model, processor, model_id="tiny-qwen2-vl", max_attempts=2, max_new_tokens=6)
    config = SamplingConfig(strategy="equal_interval", interval=1.0)
    result = sessions_from_video(two_videos / "clip0.mp4", "clip0", annotator, config, tiny_region_masker)
    assert calls == [2] and len(result.sessions) == 1  # both transitions of the clip in one batch
    session = result.sessions[0]
    assert session.instructions == ["make the red circle blue"] * 2
    assert session.camera_motion == ["static", "static"]
    for mask in session.source_masks + session.target_masks:  # SAM2 masks at frame size, stored as 0/255
        assert mask.size == session.size and mask_to_array(mask).shape == (64, 64)
    # the masks are those of the masker for the annotated phrases in each frame
    expected = tiny_region_masker.mask(session.frames[0], ["red circle"])
    assert np.array_equal(mask_to_array(session.source_masks[0]), expected)
    assert session.annotator["model"] == "tiny-qwen2-vl"
    assert session.annotator["regions"]["detector"] == "tiny-grounding-dino"
    assert session.annotator["transitions"][0]["source_objects"] == ["red circle"]
