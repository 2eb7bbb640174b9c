"""`evaluate` module: CLIP-I, the cosine similarity of the CLIP image embeddings of prediction and reference
(published numbers: openai/clip-vit-base-patch32). Higher is better.
Implementation: ``diffusers_vincie.evaluation.magicbrush``."""

from diffusers_vincie.evaluation import magicbrush
from diffusers_vincie.evaluation.metrics import base


class ClipI(base.MagicBrushMetric):
    metric_name = "clip_i"
    description = __doc__
    extra_args = base.MODEL_ARGS

    def scores(
        self, predictions, references, model_name_or_path="openai/clip-vit-base-patch32", device="cpu", batch_size=16
    ):
        scorer = magicbrush.cached_clip_scorer(str(model_name_or_path), device, batch_size)
        return magicbrush.cosine_similarities(scorer.image_features(predictions), scorer.image_features(references))
