"""Regions of editing (RoE): object phrases -> GroundingDINO boxes -> SAM2 masks -> one mask per frame.

The annotator names the changed objects of a transition as they appear in its source frame and in its target
frame (e.g. ``["the red car"]`` / ``["the blue car"]``). :class:`RegionMasker` grounds those phrases with an
open-vocabulary detector (GroundingDINO through transformers), segments each box with SAM2 (through
transformers) and fuses all masks of a frame into one boolean RoE mask (their union). No phrase, or no box
above the thresholds, gives an empty mask: "nothing of this frame is edited" (e.g. the source frame of an
"add" edit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

DEFAULT_DETECTOR = "IDEA-Research/grounding-dino-tiny"
DEFAULT_SEGMENTER = "facebook/sam2.1-hiera-tiny"


class RegionMasker:
    """Grounds object phrases into one region-of-editing mask per frame.

    Args:
        detector: A ``GroundingDinoForObjectDetection`` (or any zero-shot detector whose processor has
            ``post_process_grounded_object_detection``).
        detector_processor: Its processor (image processor + text tokenizer).
        segmenter: A ``Sam2Model``.
        segmenter_processor: Its ``Sam2Processor``.
        box_threshold: Minimum box confidence kept.
        text_threshold: Minimum phrase-token confidence of a box.
        max_boxes: Most boxes segmented per frame (highest scores first).
        detector_id: Name stored in the dataset's annotator metadata.
        segmenter_id: Name stored in the dataset's annotator metadata.
    """

    def __init__(
        self,
        detector: Any,
        detector_processor: Any,
        segmenter: Any,
        segmenter_processor: Any,
        *,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        max_boxes: int = 8,
        detector_id: str | None = None,
        segmenter_id: str | None = None,
    ):
        for name, value in (("box_threshold", box_threshold), ("text_threshold", text_threshold)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {name}={value}")
        if max_boxes < 1:
            raise ValueError(f"max_boxes must be >= 1, got max_boxes={max_boxes}")
        self.detector, self.detector_processor = detector, detector_processor
        self.segmenter, self.segmenter_processor = segmenter, segmenter_processor
        self.box_threshold, self.text_threshold, self.max_boxes = box_threshold, text_threshold, max_boxes
        self.detector_id = detector_id or type(detector).__name__
        self.segmenter_id = segmenter_id or type(segmenter).__name__

    @classmethod
    def from_pretrained(
        cls,
        detector_id: str = DEFAULT_DETECTOR,
        segmenter_id: str = DEFAULT_SEGMENTER,
        *,
        device: str | None = None,
        **kwargs: Any,
    ) -> RegionMasker:
        """Loads GroundingDINO and SAM2 checkpoints (Hub ids or local folders).

        Args:
            detector_id: GroundingDINO checkpoint.
            segmenter_id: SAM2 checkpoint.
            device: Where to run both models (default: CUDA when available, else CPU).
            **kwargs: Passed to :class:`RegionMasker` (thresholds, ``max_boxes``).
        """
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, Sam2Model, Sam2Processor

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        detector = AutoModelForZeroShotObjectDetection.from_pretrained(detector_id).to(device).eval()
        segmenter = Sam2Model.from_pretrained(segmenter_id).to(device).eval()
        return cls(
            detector,
            AutoProcessor.from_pretrained(detector_id),
            segmenter,
            Sam2Processor.from_pretrained(segmenter_id),
            detector_id=detector_id,
            segmenter_id=segmenter_id,
            **kwargs,
        )

    def metadata(self) -> dict[str, Any]:
        """JSON-serializable description stored with every session."""
        return {
            "detector": self.detector_id,
            "segmenter": self.segmenter_id,
            "box_threshold": self.box_threshold,
            "text_threshold": self.text_threshold,
        }

    # --------------------------------------------------------------------------------------------
    # Stages
    # --------------------------------------------------------------------------------------------

    def boxes(self, image: Image.Image, phrases: Sequence[str]) -> np.ndarray:
        """Detects ``phrases`` in ``image``: float ``(N, 4)`` boxes ``(x0, y0, x1, y1)`` in pixels, clipped to the
        image, best first; degenerate or non-finite boxes (untrained or confused models) are dropped."""
        import torch

        # GroundingDINO's text format: lower-case phrases separated by " . "
        cleaned = [p.strip().strip(".").strip().lower() for p in phrases]
        text = " . ".join(p for p in cleaned if p) + " ."
        inputs = self.detector_processor(images=image, text=text, return_tensors="pt").to(self.detector.device)
        with torch.inference_mode():
            outputs = self.detector(**inputs)
        result = self.detector_processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=self.box_threshold,
            text_threshold=self.text_threshold,
            target_sizes=[(image.height, image.width)],
        )[0]
        boxes = result["boxes"].float().cpu().numpy().reshape(-1, 4)  # (N, 4)
        scores = result["scores"].float().cpu().numpy().reshape(-1)  # (N,)
        order = np.argsort(-scores, kind="stable")
        boxes = boxes[order]
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, image.width)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, image.height)
        usable = np.isfinite(boxes).all(axis=1) & (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        return boxes[usable][: self.max_boxes]

    def segment(self, image: Image.Image, boxes: np.ndarray) -> np.ndarray:
        """Segments each box with SAM2 (one mask per box) and returns their union, bool ``(H, W)``."""
        import torch

        if len(boxes) == 0:
            return np.zeros((image.height, image.width), dtype=bool)
        inputs = self.segmenter_processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
        inputs = inputs.to(self.segmenter.device)
        with torch.inference_mode():
            outputs = self.segmenter(**inputs, multimask_output=False)
        # pred_masks: (1, N, 1, h, w) low-resolution logits -> (N, 1, H, W) booleans at the image size
        masks = self.segmenter_processor.post_process_masks(outputs.pred_masks.cpu(), inputs["original_sizes"].cpu())[
            0
        ]
        return masks.bool().any(dim=(0, 1)).numpy()

    def mask(self, image: Image.Image, phrases: Sequence[str]) -> np.ndarray:
        """The RoE of ``phrases`` in ``image``: union of the SAM2 masks of their GroundingDINO boxes, bool ``(H, W)``.

        Args:
            image: An RGB frame.
            phrases: Short noun phrases of the changed objects in this frame (may be empty).
        """
        if not any(p.strip().strip(".") for p in phrases):
            return np.zeros((image.height, image.width), dtype=bool)
        return self.segment(image, self.boxes(image, phrases))
