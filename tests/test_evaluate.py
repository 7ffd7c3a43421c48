"""evaluate.py: LAMBADA-style accuracy and perplexity, against the `rwkv` pip package."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from rwkv_infctx.checkpoint import save_pth
from rwkv_infctx.data.tokenizer import load_tokenizer
from rwkv_infctx.errors import DataError
from rwkv_infctx.eval.lambada import PREFIX_TOKEN, evaluate_lambada, read_lambada
from rwkv_infctx.scripts.evaluate import main as evaluate_main

from .helpers import ROOT, random_model, run_rwkv_package, tiny_config


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


def full_forward_logprobs(model, tokens: list[int]) -> torch.Tensor:
    """log p(tokens[i] | tokens[:i]) for i >= 1, from one parallel forward pass."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([tokens[:-1]]))
    return torch.log_softmax(logits[0].float(), -1).gather(1, torch.tensor(tokens[1:])[:, None])[:, 0]


def test_score_target_in_chunks_equals_one_forward(lambada_case):
    from rwkv_infctx.eval.lambada import score_target

    model, tokenizer, _, _ = lambada_case
    context, target = [PREFIX_TOKEN] + tokenizer.encode("A long time ago in a"), tokenizer.encode(" galaxy far far away")
    expected = full_forward_logprobs(model, context + target)[len(context) - 1:].sum().item()
    for chunk_len in (1, 3, 1024):
        assert score_target(model, context, target, chunk_len)[0] == pytest.approx(expected, abs=1e-4)


# -- lm-evaluation-harness adapter ---------------------------------------------------------------


@pytest.fixture(scope="module")
def harness_lm(lambada_case):
    pytest.importorskip("lm_eval")
    from rwkv_infctx.eval.lm_eval_harness import RWKVInfctxLM

    _, _, _, pth = lambada_case
    return RWKVInfctxLM(pretrained=str(pth), tokenizer="world")


def request(*args):
    from types import SimpleNamespace

    return SimpleNamespace(args=args)


@pytest.mark.slow
def test_harness_requests_equal_direct_computations(harness_lm, lambada_case):
    model, tokenizer, _, _ = lambada_case
    ctx, cont = "The old man looked at the", " sea"
    (logprob, greedy), = harness_lm.loglikelihood([request(ctx, cont)], disable_tqdm=True)
    tokens = [PREFIX_TOKEN] + tokenizer.encode(ctx) + tokenizer.encode(cont)
    direct = full_forward_logprobs(model, tokens)[-len(tokenizer.encode(cont)):]
    assert logprob == pytest.approx(direct.sum().item(), abs=1e-4)

    text = "Rolling over a whole document, token by token."
    rolling, = harness_lm.loglikelihood_rolling([request(text)], disable_tqdm=True)
    assert rolling == pytest.approx(full_forward_logprobs(model, [PREFIX_TOKEN] + tokenizer.encode(text)).sum().item(), abs=1e-4)

    generated, = harness_lm.generate_until([request(ctx, {"until": ["\n\n"], "max_gen_toks": 6})], disable_tqdm=True)
    ids = [PREFIX_TOKEN] + tokenizer.encode(ctx)
    for _ in range(6):  # greedy by full forward passes, independent of the recurrent decoder
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    new = ids[len(ids) - 6:]
    if PREFIX_TOKEN in new:
        new = new[:new.index(PREFIX_TOKEN)]
    assert generated == tokenizer.decode(new).split("\n\n")[0] and generated


TASKS = {
    "tiny_choice.yaml": """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
""",
    "tiny_gen.yaml": """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{choices[answer]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
  do_sample: false
metric_list:
  - metric: exact_match
""",
}
QUESTIONS = [{"question": "The sky is", "choices": ["blue", "green", "loud"], "answer": 0},
             {"question": "Two plus two is", "choices": ["four", "five"], "answer": 0},
             {"question": "Cats like to", "choices": ["sleep", "fly", "swim"], "answer": 1}]


@pytest.mark.slow
def test_lm_eval_cli_runs_a_local_task_with_our_model(harness_lm, lambada_case, tmp_path):
    """lm_eval's own command line (through our module, which registers --model rwkv_infctx) on a
    tiny local multiple-choice task and a generation task: its acc equals our own argmax over choices."""
    _, _, _, pth = lambada_case
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, text in TASKS.items():
        (tasks / name).write_text(text.format(data=data))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "rwkv_infctx.eval.lm_eval_harness", "--model", "rwkv_infctx",
                           "--model_args", f"pretrained={pth},tokenizer=world", "--tasks", "tiny_choice,tiny_gen",
                           "--include_path", str(tasks), "--output_path", str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results_file,) = list((tmp_path / "out").rglob("results*.json"))
    results = json.loads(results_file.read_text())["results"]
    correct = 0
    for q in QUESTIONS:
        # lm-eval joins question and choice with its default target_delimiter, one space
        scores = [lp for lp, _ in harness_lm.loglikelihood([request(q["question"], " " + c) for c in q["choices"]],
                                                           disable_tqdm=True)]
        correct += max(range(len(scores)), key=scores.__getitem__) == q["answer"]
    assert results["tiny_choice"]["acc,none"] == pytest.approx(correct / len(QUESTIONS))
    assert "exact_match,none" in results["tiny_gen"]


def test_val_lambada_during_training_equals_evaluate(tmp_path):
    """model.val_lambada: each validation logs val/lambada_acc and val/lambada_ppl, the figures
    evaluate_lambada gives for the model at that step; none during the sanity check."""
    import csv

    from .helpers import tiny_fit
    from .test_resume import small_corpus

    path = tmp_path / "held_out.jsonl"
    path.write_text("".join(json.dumps({"text": f"{context} end"}) + "\n" for context in CONTEXTS[:4]))
    trainer = tiny_fit(tmp_path, small_corpus(tmp_path), max_steps=2, module_args={"val_lambada": str(path)},
                       data_args={"test_split": 2}, limit_val_batches=1, val_check_interval=2,
                       num_sanity_val_steps=1)
    rows = [r for r in csv.DictReader(open(f"{trainer.logger.log_dir}/metrics.csv")) if r.get("val/lambada_ppl")]
    assert [int(r["step"]) for r in rows] == [1]  # Lightning's step of the validation after 2 updates
    expected = evaluate_lambada(trainer.lightning_module.model, load_tokenizer("world"), path, progress_every=0)
    assert float(rows[0]["val/lambada_acc"]) == expected.accuracy
    assert math.isclose(float(rows[0]["val/lambada_ppl"]), expected.perplexity, rel_tol=1e-5)
    from rwkv_infctx.errors import ConfigError

    with pytest.raises(ConfigError, match="model.val_lambada: no such file"):
        tiny_fit(tmp_path / "missing", small_corpus(tmp_path), max_steps=1, module_args={"val_lambada": "nope.jsonl"},
                 data_args={"test_split": 2}, limit_val_batches=1)
