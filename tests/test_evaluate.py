"""evaluate.py: LAMBADA-style accuracy and perplexity, against the `rwkv` pip package."""

import json
import math
import re

import pytest
import torch

from rwkv_infctx.checkpoint import save_pth
from rwkv_infctx.data.tokenizer import load_tokenizer
from rwkv_infctx.errors import DataError
from rwkv_infctx.eval.lambada import PREFIX_TOKEN, evaluate_lambada, read_lambada
from rwkv_infctx.scripts.evaluate import main as evaluate_main

from .helpers import random_model, run_rwkv_package, tiny_config

CONTEXTS = ["The old man looked at the sea and said", "She opened the door and saw her", "In the morning we went to the",
            "He could not believe what the letter said about", "After the long winter the river was", "They met again in",
            "The children ran into the garden to find the", "Nobody knew why the captain had left the",
            "It was the first time she had heard the", "At the end of the road stood a"]


@pytest.fixture(scope="module")
def lambada_case(tmp_path_factory):
    """A tiny world-vocab model and a LAMBADA file with accurate and inaccurate examples: the
    first target words are the model's own greedy choices (so accuracy is not trivially 0)."""
    tmp = tmp_path_factory.mktemp("lambada")
    model = random_model(tiny_config(vocab_size=65536, n_embd=32), scale=0.5).eval()
    tokenizer = load_tokenizer("world")
    texts = []
    for context in CONTEXTS:
        with torch.no_grad():
            logits, _ = model(torch.tensor([[PREFIX_TOKEN] + tokenizer.encode(context)]))
        word = tokenizer.decode([int(logits[0, -1].argmax())])
        if re.fullmatch(r" [A-Za-z]{2,}", word):
            texts.append(context + word)
    assert texts, "no greedy word found; change the seed or the contexts"
    texts += ["The cat sat on the mat", "A quiet evening by the fire with a good book"]
    path = tmp / "lambada.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return model, tokenizer, path, save_pth(model, tmp / "m.pth")


def test_lambada_equals_the_rwkv_package_demo_loop(lambada_case):
    """The same figures as BlinkDL's demo loop run on the rwkv pip package (token by token)."""
    model, tokenizer, path, pth = lambada_case
    ours = evaluate_lambada(model, tokenizer, path, progress_every=0)
    examples = read_lambada(path, tokenizer)
    body = (
        f"xsum, xacc = 0.0, 0\n"
        f"for src, dst in {examples!r}:\n"
        "    state, logprob, correct = None, 0.0, True\n"
        "    for t in src:\n"
        "        out, state = m.forward([t], state)\n"
        "    for t in dst:\n"
        "        probs = torch.softmax(out.float(), dim=-1)\n"
        "        logprob += math.log(probs[t])\n"
        "        correct = correct and int(torch.argmax(probs)) == t\n"
        "        out, state = m.forward([t], state)\n"
        "    xsum += logprob\n"
        "    xacc += correct\n"
        f"print(json.dumps([-xsum / {len(examples)}, xacc / {len(examples)}]))\n"
    )
    mean_nll, accuracy = run_rwkv_package(pth, body)
    assert 0 < ours.accuracy < 1
    assert ours.accuracy == accuracy
    assert ours.mean_nll == pytest.approx(mean_nll, abs=1e-4)
    assert ours.perplexity == pytest.approx(math.exp(mean_nll), rel=1e-4)


def test_evaluate_script_prints_the_figures_and_one_line_errors(lambada_case, tmp_path, capsys):
    model, tokenizer, path, pth = lambada_case
    evaluate_main([str(pth), "--lambada", str(path)])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = evaluate_lambada(model, tokenizer, path, progress_every=0)
    assert printed["lambada_acc"] == expected.accuracy and printed["lambada_examples"] == expected.examples
    assert printed["lambada_ppl"] == pytest.approx(expected.perplexity, rel=1e-6)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine words"}\n{"txt": "oops"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        read_lambada(bad, tokenizer)
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main([str(pth), "--lambada", str(bad)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1
