"""LAMBADA-style last-word accuracy and perplexity, the figures RWKV's own demos print.

Definition as BlinkDL's ``RWKV-v7/rwkv_v7_demo*.py`` LAMBADA check: each record's text is split
at its last space; the context is ``[0] + encode(context)`` (token 0 first, as in training) and
the target ``encode(" " + last_word)``. An example is accurate when every target token is the
argmax given what precedes it; ``ppl = exp(mean over examples of the target's summed NLL)``
(summed over the target's tokens, not averaged per token).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError
from ..model import RWKV

PREFIX_TOKEN = 0


@dataclass
class LambadaResult:
    examples: int
    accuracy: float  # fraction of examples whose every target token is the argmax
    perplexity: float
    mean_nll: float  # per example, summed over the target's tokens


def read_lambada(path: str | Path, tokenizer) -> list[tuple[list[int], list[int]]]:
    """(context tokens with the 0 prefix, target tokens) of every record of a LAMBADA jsonl."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f'{path}:{line_no}: expected a JSON object with a "text" field') from None
            if " " not in text.strip():
                raise DataError(f"{path}:{line_no}: the text has no space, so no last word to predict")
            context, word = text.rsplit(" ", 1)
            examples.append(([PREFIX_TOKEN] + tokenizer.encode(context), tokenizer.encode(" " + word)))
    if not examples:
        raise DataError(f"{path}: no records")
    return examples


@torch.no_grad()
def score_target(model: RWKV, context: list[int], target: list[int], chunk_len: int = 1024) -> tuple[float, bool]:
    """(summed log-probability of the target tokens after the context, whether each was the argmax).

    The tokens run in chunks of ``chunk_len`` with the state carried, so a long document never
    holds more than one chunk's logits."""
    device = model.emb.weight.device
    tokens = context + target[:-1]
    first = len(context) - 1  # the position whose logits predict target[0]
    state, logprob, greedy = None, 0.0, True
    for start in range(0, len(tokens), chunk_len):
        logits, state = model(torch.tensor([tokens[start:start + chunk_len]], device=device), state)
        begin = max(first, start)
        if begin >= start + logits.shape[1]:
            continue
        logits = logits[0, begin - start:].float()
        wanted = torch.tensor(target[begin - first:begin - first + logits.shape[0]], device=device)
        logprob += torch.log_softmax(logits, dim=-1).gather(1, wanted[:, None]).sum().item()
        greedy = greedy and bool((logits.argmax(-1) == wanted).all())
    return logprob, greedy


def evaluate_lambada(model: RWKV, tokenizer, path: str | Path, progress_every: int = 100,
                     out=sys.stderr) -> LambadaResult:
    examples = read_lambada(path, tokenizer)
    if max(max(c + t) for c, t in examples) >= model.cfg.vocab_size:
        raise DataError(f"{path}: the tokenizer gives ids beyond the model's vocab_size={model.cfg.vocab_size}")
    nll_sum, correct = 0.0, 0
    for i, (context, target) in enumerate(examples, 1):
        logprob, accurate = score_target(model, context, target)
        nll_sum -= logprob
        correct += accurate
        if progress_every and (i % progress_every == 0 or i == len(examples)):
            print(f"{i}/{len(examples)} ppl {math.exp(nll_sum / i):.2f} acc {100 * correct / i:.2f}%", file=out)
    mean_nll = nll_sum / len(examples)
    return LambadaResult(len(examples), correct / len(examples), math.exp(mean_nll), mean_nll)
