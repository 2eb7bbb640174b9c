"""`evaluate` module: MagicBrush L1: mean absolute pixel difference in [0, 1], the prediction resized (bicubic) to the reference size. Lower is better.

Implementation: ``diffusers_vincie.evaluation.magicbrush`` (see its docstring for the exact definitions and where
they can differ from the original MagicBrush code).
"""

import datasets
import evaluate
import numpy as np

from diffusers_vincie.evaluation import magicbrush

_DESCRIPTION = "MagicBrush L1: mean absolute pixel difference in [0, 1], the prediction resized (bicubic) to the reference size. Lower is better."

_KWARGS_DESCRIPTION = """
Args:
    predictions: edited images (PIL).
    references: reference images, one per prediction.
Returns:
    {"l1": mean over the pairs}
"""

_CITATION = """@inproceedings{zhang2023magicbrush,
  title={MagicBrush: A Manually Annotated Dataset for Instruction-Guided Image Editing},
  author={Zhang, Kai and Mo, Lingbo and Chen, Wenhu and Sun, Huan and Su, Yu},
  booktitle={NeurIPS Datasets and Benchmarks},
  year={2023}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class L1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Image()}),
        )

    def _compute(self, predictions, references):
        if not predictions:
            raise ValueError("`predictions` is empty.")
        return {"l1": float(np.mean([magicbrush.l1_distance(p, r) for p, r in zip(predictions, references)]))}
