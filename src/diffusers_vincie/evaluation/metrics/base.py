"""The shared body of the shipped MagicBrush `evaluate` modules: each module script only names its metric,
describes its inputs and scores one batch (implementations in ``diffusers_vincie.evaluation.magicbrush``)."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

CITATION = """@inproceedings{zhang2023magicbrush,
  title={MagicBrush: A Manually Annotated Dataset for Instruction-Guided Image Editing},
  author={Zhang, Kai and Mo, Lingbo and Chen, Wenhu and Sun, Huan and Su, Yu},
  booktitle={NeurIPS Datasets and Benchmarks},
  year={2023}
}
"""

MODEL_ARGS = """    model_name_or_path: checkpoint folder or Hub id (resolved from the local cache with HF_HUB_OFFLINE=1).
    device: torch device of the model.
    batch_size: inputs per forward.
"""


class MagicBrushMetric(evaluate.Metric):
    """Subclasses set ``metric_name``, ``description``, ``references_are_text``, ``extra_args`` and ``scores``."""

    metric_name: str
    description: str
    references_are_text = False
    extra_args = ""

    def _info(self):
        reference = "reference captions (strings)" if self.references_are_text else "reference images"
        inputs = (
            f"Args:\n    predictions: edited images (PIL).\n    references: {reference}, one per prediction.\n"
            f'{self.extra_args}Returns:\n    {{"{self.metric_name}": mean over the pairs}}\n'
        )
        features = {
            "predictions": datasets.Image(),
            "references": datasets.Value("string") if self.references_are_text else datasets.Image(),
        }
        return evaluate.MetricInfo(
            description=self.description,
            citation=CITATION,
            inputs_description=inputs,
            features=datasets.Features(features),
        )

    def _compute(self, predictions, references, **kwargs):
        if not predictions:
            raise ValueError("`predictions` is empty.")
        return {self.metric_name: float(np.mean(self.scores(predictions, references, **kwargs)))}

    def scores(self, predictions, references, **kwargs) -> list[float]:
        raise NotImplementedError
