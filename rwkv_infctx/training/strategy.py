"""Strategy-specific needs (DeepSpeed ZeRO stages, offload), in one place: the rest of the trainer
asks these questions instead of looking into the strategy itself."""

from __future__ import annotations

import contextlib

import torch

from ..errors import ConfigError


def check_strategy(trainer) -> None:
    """What Lightning would only refuse with a stack trace, refused in one line."""
    from lightning.pytorch.accelerators import CUDAAccelerator
    from lightning.pytorch.strategies import DeepSpeedStrategy

    if isinstance(trainer.strategy, DeepSpeedStrategy) and not isinstance(trainer.accelerator, CUDAAccelerator):
        raise ConfigError("trainer.strategy: DeepSpeed runs on CUDA GPUs only (Lightning refuses it on "
                          f"{type(trainer.accelerator).__name__}); on this machine use strategy auto or ddp")


def offloads_optimizer(strategy) -> bool:
    """True for DeepSpeed with ZeRO-Offload of the optimizer (deepspeed_stage_*_offload)."""
    config = getattr(strategy, "config", None)
    if not isinstance(config, dict):
        return False
    offload = config.get("zero_optimization", {}).get("offload_optimizer")
    return bool(offload) and (not isinstance(offload, dict) or offload.get("device", "cpu") != "none")


def can_fuse_adam(trainer, params) -> bool:
    """Whether torch's fused AdamW (one kernel over all tensors, on CPU as on CUDA) may run: not
    under DeepSpeed, whose ZeRO optimizers drive the step themselves; not with Lightning's AMP
    plugin, which refuses gradient clipping for an optimizer that would unscale gradients itself;
    and every parameter on a device torch fuses for."""
    from lightning.pytorch.plugins import MixedPrecision

    if isinstance(getattr(trainer.strategy, "config", None), dict):  # DeepSpeedStrategy
        return False
    if isinstance(trainer.precision_plugin, MixedPrecision):
        return False
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


def zero_stage_3(strategy) -> bool:
    config = getattr(strategy, "config", None)
    return isinstance(config, dict) and config.get("zero_optimization", {}).get("stage") == 3


def pad_to_longest_across_ranks(batch: dict) -> dict:
    """ZeRO-3 gathers every layer's parameters collectively in each chunk's forward, so all ranks
    must run the same number of chunks: pad (untrained positions) to the longest batch of any rank."""
    length = torch.tensor(batch["input_ids"].shape[1], device=batch["input_ids"].device)
    torch.distributed.all_reduce(length, op=torch.distributed.ReduceOp.MAX)
    extra = int(length) - batch["input_ids"].shape[1]
    return {k: torch.nn.functional.pad(v, (0, extra)) for k, v in batch.items()} if extra else batch


def gathered_parameters(strategy, model: torch.nn.Module):
    """Under DeepSpeed ZeRO-3 each rank holds a shard of every parameter: gather them whole
    (on every rank, as the gather is collective) for the export; elsewhere, nothing to do."""
    if zero_stage_3(strategy):
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    return contextlib.nullcontext()
