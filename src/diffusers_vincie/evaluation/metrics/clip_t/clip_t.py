"""`evaluate` module: CLIP-T, the cosine similarity of the CLIP embeddings of the predicted image and of the
reference caption (published numbers: openai/clip-vit-base-patch32). Higher is better.
Implementation: ``diffusers_vincie.evaluation.magicbrush``."""

from diffusers_vincie.evaluation import magicbrush
from diffusers_vincie.evaluation.metrics import base


class ClipT(base.MagicBrushMetric):
    metric_name = "clip_t"
    description = __doc__
    references_are_text = True
    extra_args = base.MODEL_ARGS

    def scores(
        self, predictions, references, model_name_or_path="openai/clip-vit-base-patch32", device="cpu", batch_size=16
    ):
        scorer = magicbrush.cached_clip_scorer(str(model_name_or_path), device, batch_size)
        return magicbrush.cosine_similarities(scorer.image_features(predictions), scorer.text_features(references))
