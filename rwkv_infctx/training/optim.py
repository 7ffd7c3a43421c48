"""BlinkDL's optimizer groups and learning-rate schedule."""

from __future__ import annotations

import math

from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay only on 2-D ``.weight`` matrices; 2x learning rate on the decay bias
    (``att.w0`` in x070, ``att.time_decay`` in x052/x060), as BlinkDL's trainers do.

    ``lr_scale`` is read by the schedule; it mirrors BlinkDL's ``my_lr_scale``.
    """
    decay, double_lr, plain = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith(("att.w0", "att.time_decay")):
            double_lr.append(p)
        elif weight_decay > 0 and p.squeeze().dim() >= 2 and name.endswith(".weight"):
            decay.append(p)
        else:
            plain.append(p)
    groups = [
        {"params": plain, "weight_decay": 0.0, "lr_scale": 1.0, "name": "1x"},
        {"params": double_lr, "weight_decay": 0.0, "lr_scale": 2.0, "name": "2x"},
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0, "name": "decay"},
    ]
    return [g for g in groups if g["params"]]


def lr_at(step: int, total_steps: int, lr_init: float, lr_final: float, warmup_steps: int) -> float:
    """Linear warmup from 1% of lr_init, then cosine from lr_init to lr_final (BlinkDL's v7 schedule)."""
    if total_steps <= warmup_steps:
        progress = 1.0
    else:
        progress = min(max((step - warmup_steps) / (total_steps - warmup_steps), 0.0), 1.0)
    final_ratio = lr_final / lr_init
    lr = lr_init * ((0.5 + final_ratio / 2) + (0.5 - final_ratio / 2) * math.cos(math.pi * progress))
    if step < warmup_steps:
        lr *= 0.01 + 0.99 * step / warmup_steps
    return lr
