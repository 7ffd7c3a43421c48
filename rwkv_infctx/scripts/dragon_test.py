"""Sanity check a model: continue the classic dragon prompt with our recurrent decoder."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ..checkpoint import config_from_state_dict, load_pth, load_state_into
from ..data.tokenizer import load_tokenizer
from ..errors import RWKVTrainerError, one_line_errors
from ..generate import DRAGON_PROMPT, SamplingConfig, generate_tokens
from ..model import RWKV
from ..model.adapters import load_adapter


def load_model(path: str, wkv_backend: str = "chunked", adapter: str | None = None) -> RWKV:
    """A .pth as an fp32 model in eval mode; an adapter file (model.load_adapter's) put on top."""
    sd = load_pth(path, argument="dragon_test.py model")
    model = RWKV(config_from_state_dict(sd), wkv_backend)
    load_state_into(model, sd, path)
    if adapter:
        load_adapter(model, adapter, None)
    return model.float().eval()


def stream_text(tokenizer, token_ids):
    """Yields printable text pieces, holding back bytes of a character split across tokens."""
    ids, shown = [], ""
    for token in token_ids:
        ids.append(token)
        text = tokenizer.decode(ids)
        if not text.endswith("\ufffd"):
            yield text[len(shown):]
            shown = text


def run(path: str, tokenizer_name: str, prompt: str, length: int, sampling: SamplingConfig, out=sys.stdout,
        adapter: str | None = None) -> dict:
    model = load_model(path, adapter=adapter)
    tokenizer = load_tokenizer(tokenizer_name)
    prompt_ids = tokenizer.encode(prompt)
    if max(prompt_ids, default=0) >= model.cfg.vocab_size:
        raise RWKVTrainerError(f"--tokenizer {tokenizer_name} gives ids beyond the model's vocab_size={model.cfg.vocab_size}")
    out.write(prompt)
    start, count, pieces = time.perf_counter(), 0, []

    def counted():
        nonlocal count
        for token in generate_tokens(model, prompt_ids, length, sampling):
            count += 1
            yield token

    for piece in stream_text(tokenizer, counted()):
        pieces.append(piece)
        out.write(piece)
        out.flush()
    seconds = time.perf_counter() - start
    out.write(f"\n\n[{count} tokens in {seconds:.2f} s: {count / max(seconds, 1e-9):.1f} tokens/s]\n")
    return {"tokens": count, "seconds": seconds, "text": "".join(pieces)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="dragon_test.py", description=__doc__)
    p.add_argument("model", help="a BlinkDL-format .pth")
    p.add_argument("--adapter", default=None, help="an adapter file (rwkv-final-adapter.pth) to apply to the model")
    p.add_argument("--tokenizer", default="world", help="world, or a path to a Hugging Face tokenizer.json")
    p.add_argument("--prompt", default=DRAGON_PROMPT)
    p.add_argument("--length", type=int, default=100, help="new tokens to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top_p", type=float, default=0.85)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with one_line_errors():
        run(args.model, args.tokenizer, args.prompt, args.length,
            SamplingConfig(args.temperature, args.top_p, args.seed), adapter=args.adapter)
