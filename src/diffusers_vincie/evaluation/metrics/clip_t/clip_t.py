"""`evaluate` module: CLIP-T: cosine similarity of the CLIP embeddings of the predicted image and of the reference caption (published numbers: openai/clip-vit-base-patch32). Higher is better.

Implementation: ``diffusers_vincie.evaluation.magicbrush`` (see its docstring for the exact definitions and where
they can differ from the original MagicBrush code).
"""

import datasets
import evaluate
import numpy as np

from diffusers_vincie.evaluation import magicbrush

_DESCRIPTION = "CLIP-T: cosine similarity of the CLIP embeddings of the predicted image and of the reference caption (published numbers: openai/clip-vit-base-patch32). Higher is better."

_KWARGS_DESCRIPTION = """
Args:
    predictions: edited images (PIL).
    references: reference captions (strings), one per prediction.
    model_name_or_path: checkpoint folder or Hub id (resolved from the local cache with HF_HUB_OFFLINE=1).
    device: torch device of the model.
    batch_size: inputs per forward.
Returns:
    {"clip_t": mean over the pairs}
"""

_CITATION = """@inproceedings{zhang2023magicbrush,
  title={MagicBrush: A Manually Annotated Dataset for Instruction-Guided Image Editing},
  author={Zhang, Kai and Mo, Lingbo and Chen, Wenhu and Sun, Huan and Su, Yu},
  booktitle={NeurIPS Datasets and Benchmarks},
  year={2023}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClipT(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, model_name_or_path="openai/clip-vit-base-patch32", device="cpu", batch_size=16):
        if not predictions:
            raise ValueError("`predictions` is empty.")
        scorer = magicbrush.cached_clip_scorer(str(model_name_or_path), device, batch_size)
        scores = magicbrush.cosine_similarities(scorer.image_features(predictions), scorer.text_features(references))
        return {"clip_t": float(np.mean(scores))}
