"""BlinkDL's optimizer groups and learning-rate schedule."""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..model import RWKV, VERSIONS


def param_groups(model: RWKV, weight_decay: float, state_lr_scale: float = 1.0) -> list[dict]:
    """Weight decay only on 2-D ``.weight`` matrices; 2x learning rate on the decay bias (each
    version's ``VersionSpec.double_lr``: ``att.w0`` in x070, ``att.time_decay`` in x052/x060), as
    BlinkDL's trainers do. A learned
    starting state (state tuning) gets its own group at ``state_lr_scale`` x the learning rate.
    Frozen parameters get no group (and so no optimizer state).

    ``lr_scale`` is read by the schedule; it mirrors BlinkDL's ``my_lr_scale``.
    """
    double_lr_names = VERSIONS[model.cfg.version].double_lr
    decay, double_lr, plain, state = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name == "initial_wkv":
            state.append(p)
        elif name.endswith(double_lr_names):
            double_lr.append(p)
        elif weight_decay > 0 and p.squeeze().dim() >= 2 and name.endswith(".weight"):
            decay.append(p)
        else:
            plain.append(p)
    groups = [
        {"params": plain, "weight_decay": 0.0, "lr_scale": 1.0, "name": "1x"},
        {"params": double_lr, "weight_decay": 0.0, "lr_scale": 2.0, "name": "2x"},
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0, "name": "decay"},
        {"params": state, "weight_decay": 0.0, "lr_scale": state_lr_scale, "name": "state"},
    ]
    return [g for g in groups if g["params"]]


LR_SCHEDULES = ("cosine", "exponential")


def lr_at(step: int, total_steps: int, lr_init: float, lr_final: float, warmup_steps: int,
          schedule: str = "cosine") -> float:
    """Linear warmup from 1% of lr_init, then a decay from lr_init to lr_final, as BlinkDL's trainers do.

    cosine (RWKV-v7 train_temp, with --my_exit_tokens): lr_final is reached at step total_steps.
    exponential (RWKV-v5 without --my_exit_tokens): geometric, lr_final reached at the last step
    (total_steps - 1); BlinkDL's progress (step - warmup + 1) / (total - warmup) kept as is.
    """
    if schedule not in LR_SCHEDULES:
        raise ConfigError(f"model.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")
    final_ratio = lr_final / lr_init
    decay_steps = total_steps - warmup_steps
    if schedule == "exponential":
        if final_ratio <= 0:
            raise ConfigError(f"model.lr_schedule=exponential needs lr_final > 0 (got {lr_final}); or use cosine")
        progress = min(max((step - warmup_steps + 1) / decay_steps, 0.0), 1.0) if decay_steps > 0 else 1.0
        lr = lr_init * math.exp(math.log(final_ratio) * progress)
    else:
        progress = min(max((step - warmup_steps) / decay_steps, 0.0), 1.0) if decay_steps > 0 else 1.0
        lr = lr_init * ((0.5 + final_ratio / 2) + (0.5 - final_ratio / 2) * math.cos(math.pi * progress))
    if step < warmup_steps:
        lr *= 0.01 + 0.99 * step / warmup_steps
    return lr


def make_adam(groups: list[dict], lr: float, betas: tuple[float, float], eps: float,
              cpu_offload: bool = False, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW, or DeepSpeed's CPU Adam when ZeRO-Offload keeps the optimizer on the CPU
    (DeepSpeed refuses a plain torch optimizer there). ``fused`` takes torch's fused kernel: on a
    CPU its step over a 37M-parameter model took 0.08 s against 0.4-0.9 s for the default loop."""
    if not cpu_offload:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=lr, betas=betas, eps=eps, adamw_mode=True)
    except Exception as exc:  # the op is JIT-built: no compiler, no headers, ...
        reason = " ".join(str(exc).split())[:200]
        raise ConfigError(
            "optimizer offload needs DeepSpeed's CPU-Adam op, which could not be built "
            f"({type(exc).__name__}: {reason}); install a C++ toolchain or use a strategy without _offload"
        ) from exc
