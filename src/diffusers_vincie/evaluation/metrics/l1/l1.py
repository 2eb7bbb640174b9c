"""`evaluate` module: MagicBrush L1, the mean absolute pixel difference in [0, 1] with the prediction resized
(bicubic) to the reference size. Lower is better. Implementation: ``diffusers_vincie.evaluation.magicbrush``."""

from diffusers_vincie.evaluation import magicbrush
from diffusers_vincie.evaluation.metrics import base


class L1(base.MagicBrushMetric):
    metric_name = "l1"
    description = __doc__

    def scores(self, predictions, references):
        return [magicbrush.l1_distance(p, r) for p, r in zip(predictions, references)]
