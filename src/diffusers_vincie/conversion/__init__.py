"""Official VINCIE checkpoints -> diffusers components."""
