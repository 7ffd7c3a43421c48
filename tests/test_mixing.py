"""Several sources in one run: each cached on its own, drawn in the configured proportions."""

import json

import numpy as np
import pytest

from rwkv_infctx.data.datamodule import RWKVDataModule
from rwkv_infctx.errors import ConfigError


def write_source(path, word, n):
    path.write_text("".join(json.dumps({"text": f"{word} {i} " * 3}) + "\n" for i in range(n)))
    return str(path)


def source_shares(data, words):
    """Fraction of training samples of one epoch (as the sampler deals them) from each source."""
    from rwkv_infctx.data.tokenizer import load_tokenizer

    world = load_tokenizer("world")
    firsts = [world.encode(w)[0] for w in words]
    train = data.train_set
    counts = np.bincount([firsts.index(int(train[i][0][0])) for i in range(len(train))], minlength=len(words))
    return counts / counts.sum()


@pytest.mark.parametrize("how", ["weight", "repeat"])
def test_mixture_matches_the_weights(tmp_path, how):
    a, b = write_source(tmp_path / "a.jsonl", "apple", 300), write_source(tmp_path / "b.jsonl", "banana", 60)
    if how == "weight":  # 300 vs 60 samples, drawn 1:3
        sources, want = [{"source": a, "weight": 1}, {"source": b, "weight": 3}], [0.25, 0.75]
    else:  # a: half of its samples, b: each twice -> 150 : 120
        sources, want = [{"source": a, "repeat": 0.5}, {"source": b, "repeat": 2}], [150 / 270, 120 / 270]
    data = RWKVDataModule(sources=sources, data_path=str(tmp_path / "cache"), test_split=0.05, batch_size=4)
    data.prepare_data()
    data.setup("fit")
    shares = source_shares(data, ["apple", "banana"])
    assert np.allclose(shares, want, atol=0.01), shares  # tolerance: rounding of the per-source counts
    assert len(list((tmp_path / "cache").glob("samples-*"))) == 2  # one cache per source
    assert len(data.val_set) == round(360 * 0.05)


def test_per_source_format_switches(tmp_path):
    a = write_source(tmp_path / "a.jsonl", "apple", 20)
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"q": "Q?", "a": "A."}) + "\n" for _ in range(20)))
    data = RWKVDataModule(sources=[{"source": a, "weight": 1},
                                   {"source": str(qa), "weight": 1, "format": "prompt_completion",
                                    "prompt_column": "q", "completion_column": "a"}], test_split=0)
    data.setup("fit")
    masked = [s for s in data.train_set if not s[1].all()]
    assert len(masked) == len(data.train_set) // 2  # the prompt of every Q/A sample is not trained


@pytest.mark.parametrize("sources, said", [
    ([], "at least one"),
    ([{"source": "a.jsonl", "weight": 1}, {"source": "b.jsonl"}], "give every source a weight"),
    ([{"source": "a.jsonl", "tokenizer": "neox"}], "unknown key 'tokenizer'"),
    ([{"weight": 1}], "has no 'source'"),
    ([{"source": "a.jsonl", "repeat": -1}], "must be a number >= 0"),
])
def test_bad_sources_are_one_line_errors(sources, said):
    with pytest.raises(ConfigError, match=said):
        RWKVDataModule(sources=sources)
