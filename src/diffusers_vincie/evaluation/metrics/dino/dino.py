"""`evaluate` module: DINO, the cosine similarity of the DINO ViT class tokens of prediction and reference
(published numbers: facebook/dino-vits16). Higher is better.
Implementation: ``diffusers_vincie.evaluation.magicbrush``."""

from diffusers_vincie.evaluation import magicbrush
from diffusers_vincie.evaluation.metrics import base


class Dino(base.MagicBrushMetric):
    metric_name = "dino"
    description = __doc__
    extra_args = base.MODEL_ARGS

    def scores(self, predictions, references, model_name_or_path="facebook/dino-vits16", device="cpu", batch_size=16):
        scorer = magicbrush.cached_dino_scorer(str(model_name_or_path), device, batch_size)
        return magicbrush.cosine_similarities(scorer.image_features(predictions), scorer.image_features(references))
