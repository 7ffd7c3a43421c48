"""EleutherAI lm-evaluation-harness (0.4.x) adapter: ``--model rwkv_infctx`` runs a BlinkDL .pth
with our recurrent model, on any task of the harness (loglikelihood, rolling, generation).

lm-eval 0.4 finds models only through ``register_model`` at import time (it reads no plugin
entry points), so this module registers the adapter and, run as a program, hands its arguments
to lm-eval's own command line:

    python -m rwkv_infctx.eval.lm_eval_harness --model rwkv_infctx \\
        --model_args pretrained=model.pth,tokenizer=world --tasks lambada_openai

From Python, import this module and pass ``model="rwkv_infctx"`` (or an ``RWKVInfctxLM``) to
``lm_eval.simple_evaluate``. Every context starts with token 0, the document separator the
models are trained with, as in the LAMBADA figures of ``evaluate.py``.
"""

from __future__ import annotations

import warnings

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from ..data.tokenizer import load_tokenizer
from ..generate import SamplingConfig, generate_tokens
from .lambada import PREFIX_TOKEN, score_target


@register_model("rwkv_infctx")
class RWKVInfctxLM(LM):
    def __init__(self, pretrained: str, tokenizer: str = "world", device: str = "cpu",
                 max_gen_toks: int = 256, batch_size=None, max_batch_size=None, **_ignored):
        """``pretrained``: a BlinkDL .pth; ``tokenizer``: world, neox or a tokenizer.json path.
        Requests run one at a time (the recurrent model needs no padding), so batch sizes are ignored."""
        super().__init__()
        from ..scripts.dragon_test import load_model

        if str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm_eval's command line passes --device cuda unless told otherwise
            warnings.warn(f"device={device} asked but no CUDA GPU here; running on the CPU")
            device = "cpu"
        self.model = load_model(pretrained).to(device)
        self.tokenizer = load_tokenizer(tokenizer)
        self.max_gen_toks = int(max_gen_toks)

    def _context(self, text: str) -> list[int]:
        return [PREFIX_TOKEN] + self.tokenizer.encode(text)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results = []
        for request in tqdm(requests, disable=disable_tqdm, desc="loglikelihood"):
            context, continuation = request.args
            target = self.tokenizer.encode(continuation)
            results.append(score_target(self.model, self._context(context), target) if target else (0.0, True))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        results = []
        for request in tqdm(requests, disable=disable_tqdm, desc="loglikelihood_rolling"):
            tokens = self.tokenizer.encode(request.args[0])
            results.append(score_target(self.model, [PREFIX_TOKEN], tokens)[0] if tokens else 0.0)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        return [self._generate(*request.args) for request in tqdm(requests, disable=disable_tqdm, desc="generate_until")]

    def _generate(self, context: str, gen_kwargs: dict) -> str:
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(gen_kwargs.get("temperature", 0.0)) if gen_kwargs.get("do_sample") else 0.0
        sampling = SamplingConfig(temperature=temperature, top_p=float(gen_kwargs.get("top_p", 1.0)))
        length = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
        new, text = [], ""
        for token in generate_tokens(self.model, self._context(context), length, sampling, stop_ids=(PREFIX_TOKEN,)):
            new.append(token)
            text = self.tokenizer.decode(new)
            if any(stop in text for stop in until):
                break
        for stop in until:
            text = text.split(stop)[0]
        return text


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
