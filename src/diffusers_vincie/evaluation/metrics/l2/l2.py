"""`evaluate` module: MagicBrush L2, the mean squared pixel difference in [0, 1] with the prediction resized
(bicubic) to the reference size. Lower is better. Implementation: ``diffusers_vincie.evaluation.magicbrush``."""

from diffusers_vincie.evaluation import magicbrush
from diffusers_vincie.evaluation.metrics import base


class L2(base.MagicBrushMetric):
    metric_name = "l2"
    description = __doc__

    def scores(self, predictions, references):
        return [magicbrush.l2_distance(p, r) for p, r in zip(predictions, references)]
