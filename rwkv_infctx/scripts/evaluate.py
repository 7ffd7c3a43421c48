"""Score a .pth: LAMBADA-style last-word accuracy and perplexity on a local jsonl ({"text": ...} lines)."""

from __future__ import annotations

import argparse
import json

import torch

from ..data.tokenizer import load_tokenizer
from ..errors import one_line_errors
from ..eval.lambada import evaluate_lambada
from .dragon_test import load_model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__)
    p.add_argument("model", help="a BlinkDL-format .pth")
    p.add_argument("--lambada", required=True, help="a jsonl in the LAMBADA format, e.g. lambada_test.jsonl")
    p.add_argument("--tokenizer", default="world", help="world, neox, or a path to a Hugging Face tokenizer.json")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with one_line_errors(OSError):
        model = load_model(args.model).to(args.device)
        result = evaluate_lambada(model, load_tokenizer(args.tokenizer), args.lambada)
    print(json.dumps({"lambada_examples": result.examples, "lambada_acc": result.accuracy,
                      "lambada_ppl": result.perplexity}))
