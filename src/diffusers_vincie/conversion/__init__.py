"""Official VINCIE checkpoints -> diffusers components (:mod:`.dit`, :mod:`.vae`, :mod:`.qwen`, read through
:mod:`.checkpoint`), and the command that converts a whole release: ``python -m diffusers_vincie.conversion``
(:mod:`.convert`)."""
