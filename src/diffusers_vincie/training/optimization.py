"""The optimizer and learning-rate schedule of the training scripts: AdamW over the trained transformer weights (and
a trained text encoder's, with its own learning rate) and a diffusers schedule."""

from __future__ import annotations

import torch


def build_optimizer(args, module: torch.nn.Module, text_params: list, num_processes: int):
    """``(AdamW, LR scheduler)`` for the trainable parameters of ``module`` and ``text_params``.

    Flags read: ``learning_rate``, ``text_encoder_learning_rate``, ``scale_lr`` (multiplies the learning rates by
    accumulation steps x batch size x processes), ``adam_*``, ``lr_scheduler``, ``lr_warmup_steps``,
    ``lr_decay_steps`` (default ``max_train_steps``). The schedule steps once per process per optimizer step, as
    accelerate's prepared scheduler does.
    """
    from diffusers.optimization import get_scheduler

    scale = args.gradient_accumulation_steps * args.train_batch_size * num_processes if args.scale_lr else 1
    groups = [{"params": [p for p in module.parameters() if p.requires_grad], "lr": args.learning_rate * scale}]
    if text_params:
        groups.append({"params": text_params, "lr": (args.text_encoder_learning_rate or args.learning_rate) * scale})
    optimizer = torch.optim.AdamW(
        groups,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * num_processes,
        num_training_steps=(args.lr_decay_steps or args.max_train_steps) * num_processes,
    )
    return optimizer, scheduler


__all__ = ["build_optimizer"]
