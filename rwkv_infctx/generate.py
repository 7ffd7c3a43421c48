"""Recurrent sampling: the prompt in one parallel pass, then one token at a time with the state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from .model import RWKV, RecurrentState

DRAGON_PROMPT = (
    "\nIn a shocking finding, scientist discovered a herd of dragons living in a remote, previously "
    "unexplored valley, in Tibet. Even more surprising to the researchers was the fact that the dragons "
    "spoke perfect Chinese."
)


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 0.85
    seed: int | None = 42


def sample_token(logits: Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> int:
    """Nucleus sampling on one (V,) logit vector; temperature 0 is greedy."""
    if cfg.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    sorted_probs, order = probs.sort(descending=True)
    keep = sorted_probs.cumsum(0) - sorted_probs < cfg.top_p  # always keeps the most likely token
    sorted_probs = sorted_probs * keep
    choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
    return int(order[choice])


@torch.no_grad()
def generate_tokens(model: RWKV, prompt_ids: list[int], length: int, cfg: SamplingConfig,
                    stop_ids: tuple[int, ...] = ()) -> Iterator[int]:
    """Yields up to ``length`` new token ids; the model runs recurrently on its carried state."""
    device = model.emb.weight.device
    generator = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
    state: RecurrentState | None = None
    logits, state = model(torch.tensor([prompt_ids], device=device), state)
    next_logits = logits[0, -1].cpu()
    for _ in range(length):
        token = sample_token(next_logits, cfg, generator)
        if token in stop_ids:
            return
        yield token
        logits, state = model(torch.tensor([[token]], device=device), state)
        next_logits = logits[0, -1].cpu()
