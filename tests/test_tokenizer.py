"""The world tokenizer must agree id-for-id with the reference implementation,
and the embedded corpus must stay a usable default training set."""

import json
import random
from pathlib import Path

import pytest

from rwkv_infctx.data.tokenizer import HFTokenizerFile, WorldTokenizer, load_tokenizer
from rwkv_infctx.errors import ConfigError, DataError

CORPUS = Path(__file__).resolve().parents[1] / "rwkv_infctx" / "data" / "corpus" / "english_prose.jsonl"

TRICKY = [
    "",
    " ",
    "\n\n",
    "\n\n\n\n\n",
    "trailing spaces   ",
    "   leading and\ttabs\t\t\r\n",
    " " * 300,
    "中文分词测试：你好，世界！今天天气很好。",
    "日本語のテキストとカタカナ、ひらがな。",
    "emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 and ✨",
    "Crème brûlée, naïve café, São Paulo, Ærøskøbing, Łódź",
    "combining: e\u0301 a\u0308 and zero\u200bwidth",
    "Привет, мир! Ελληνικά. مرحبا بالعالم. שלום",
    "\x00\x01 control \x7f and max code point \U0010ffff",
    "def f(x):\n    return x ** 2  # code\n",
]


@pytest.fixture(scope="module")
def world():
    return WorldTokenizer()


@pytest.fixture(scope="module")
def reference(world):
    rwkv_tokenizer = pytest.importorskip("rwkv.rwkv_tokenizer")
    return rwkv_tokenizer.TRIE_TOKENIZER(world.vocab_path)


@pytest.fixture(scope="module")
def corpus_docs():
    with open(CORPUS, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def test_corpus_file_is_a_usable_training_set():
    lines = CORPUS.read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines]
    assert len(texts) >= 40
    assert all(isinstance(t, str) and t.strip() for t in texts)
    total = sum(len(t.encode("utf-8")) for t in texts)
    assert 300_000 <= total <= 600_000
    assert all(t == t.rstrip() for t in texts)
    median = sorted(len(t) for t in texts)[len(texts) // 2]
    assert 1000 <= median <= 8000


def test_world_matches_reference_on_whole_corpus(world, reference, corpus_docs):
    text = "\n\n".join(corpus_docs)
    assert world.encode(text) == reference.encode(text)


@pytest.mark.parametrize("text", TRICKY)
def test_world_matches_reference_on_tricky_strings(world, reference, text):
    ids = world.encode(text)
    assert ids == reference.encode(text)
    assert world.decode(ids) == text


def test_world_matches_reference_on_random_unicode(world, reference):
    rng = random.Random(1234)
    alphabet = list("aeiou tnsrl.,\n\t'\"") + ["中", "文", "é", "ß", "😀", "\u0301", "🏽", "ж", "\u200d"]
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
        assert world.encode(text) == reference.encode(text), text


def test_world_round_trips_prose(world, corpus_docs):
    for doc in corpus_docs[:40]:
        ids = world.encode(doc)
        assert 0 < len(ids) < len(doc.encode("utf-8"))  # real prose compresses
        assert world.decode(ids) == doc


def test_world_special_ids_and_bad_utf8(world):
    assert world.vocab_size == 65536 and world.eos_id == 0
    assert world.decode([0]) == ""
    assert world.decode(world.encode("a") + [0] + world.encode("b")) == "ab"
    assert world.decode([0xE4 + 1]) == "\ufffd"  # lone lead byte of a 3-byte character
    with pytest.raises(DataError):
        world.decode([65536])
    with pytest.raises(DataError):
        world.decode([-1])


def test_load_tokenizer_world_and_unknown_names():
    assert isinstance(load_tokenizer("world"), WorldTokenizer)
    for name in ("neox", "neox-typo", "does/not/exist.json"):
        with pytest.raises(ConfigError) as info:
            load_tokenizer(name)
        assert name in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="not available yet"):
        load_tokenizer("neox")


def _save_byte_level_bpe(path: Path, corpus_docs, specials):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus_docs[:20], trainer=trainer)
    tok.save(str(path))


def test_load_tokenizer_json_file_and_directory(tmp_path, corpus_docs):
    path = tmp_path / "tokenizer.json"
    _save_byte_level_bpe(path, corpus_docs, ["<pad>", "<|endoftext|>"])
    text = "Assignment statements bind names to values. Ünïcode too: 中文 😀"
    for source in (str(path), str(tmp_path)):
        tok = load_tokenizer(source)
        assert isinstance(tok, HFTokenizerFile)
        ids = tok.encode(text)
        assert ids and all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
        assert tok.eos_id == 1
        assert 256 < tok.vocab_size <= 400


def test_load_tokenizer_json_without_endoftext_uses_zero(tmp_path, corpus_docs):
    path = tmp_path / "bpe.json"
    _save_byte_level_bpe(path, corpus_docs, ["<pad>", "<s>"])
    assert load_tokenizer(str(path)).eos_id == 0


def test_load_tokenizer_rejects_broken_json(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_tokenizer(str(path))
    assert "\n" not in str(info.value)
