"""The world tokenizer must agree id-for-id with the reference implementation, the packaged
NeoX tokenizer must give GPT-NeoX's ids, and the embedded corpus must stay a usable default
training set."""

import hashlib
import json
import random
import unicodedata
from pathlib import Path

import pytest

from rwkv_infctx.data.tokenizer import HFTokenizerFile, WorldTokenizer, load_tokenizer
from rwkv_infctx.errors import ConfigError, DataError

from .helpers import ROOT

CORPUS = ROOT / "rwkv_infctx" / "data" / "corpus" / "english_prose.jsonl"
NEOX_SHA256 = "56ac4821e129d2c520fdaba60abd920fa852ada51b45c0dd52bbb6bd8c985ade"

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
    for name in ("neox-typo", "NeoX", "does/not/exist.json"):
        with pytest.raises(ConfigError) as info:
            load_tokenizer(name)
        assert name in str(info.value) and "\n" not in str(info.value)


@pytest.fixture(scope="module")
def neox():
    return load_tokenizer("neox")


def test_neox_is_the_packaged_unmodified_gpt_neox_file(neox):
    assert isinstance(neox, HFTokenizerFile)
    path = Path(neox.path).resolve()
    assert path.parent == ROOT / "rwkv_infctx" / "data" / "tokenizers"
    # NOTICE.md states the file is redistributed unmodified; this keeps that statement true.
    assert hashlib.sha256(path.read_bytes()).hexdigest() == NEOX_SHA256
    assert (path.parent / "NOTICE.md").is_file()
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for shipped in (path, path.parent / "NOTICE.md"):  # the licence must travel with the file
        assert any(shipped.relative_to(ROOT / "rwkv_infctx").match(g) for g in package_data["rwkv_infctx"])


def test_neox_vocab_size_and_eos(neox):
    # RWKV-4 Pile models have 50277 embedding rows: 50254 BPE tokens + 23 added whitespace runs.
    assert neox.vocab_size == 50277
    assert neox.eos_id == 0
    assert neox.decode([0]) == "<|endoftext|>"


# Ids computed once with the `tokenizers` library straight from the json; the first two also
# appear in other projects' tests for EleutherAI's Pythia models (same tokenizer). The third
# exercises the added whitespace tokens 50274 and 50276.
NEOX_KNOWN_IDS = {
    "Hello world": [12092, 1533],
    "The quick brown fox jumps over the lazy dog.": [510, 3158, 8516, 30013, 27287, 689, 253, 22658, 4370, 15],
    "  indented\n    code": [50276, 527, 8006, 187, 50274, 3211],
}


@pytest.mark.parametrize("text", list(NEOX_KNOWN_IDS))
def test_neox_known_ids(neox, text):
    assert neox.encode(text) == NEOX_KNOWN_IDS[text]
    assert neox.decode(NEOX_KNOWN_IDS[text]) == text


def test_neox_round_trips_prose(neox, corpus_docs):
    for doc in corpus_docs[:40]:
        ids = neox.encode(doc)
        assert 0 < len(ids) < len(doc.encode("utf-8"))
        assert max(ids) < neox.vocab_size and 0 not in ids  # eos is added by the pipeline, not by encode
        assert neox.decode(ids) == doc


@pytest.mark.parametrize("text", [t for t in TRICKY if unicodedata.is_normalized("NFC", t)])
def test_neox_round_trips_tricky_strings(neox, text):
    # Non-NFC strings are left out: the NeoX normalizer composes them, by design.
    assert neox.decode(neox.encode(text)) == text


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


def test_hf_vocab_size_covers_highest_id_when_ids_have_gaps(tmp_path, corpus_docs):
    # get_vocab_size counts tokens; an embedding sized by that count would be indexed out of range.
    path = tmp_path / "tokenizer.json"
    _save_byte_level_bpe(path, corpus_docs, ["<|endoftext|>"])
    data = json.loads(path.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    moved = max(vocab, key=vocab.get)
    vocab[moved] = 1000
    path.write_text(json.dumps(data), encoding="utf-8")
    tok = load_tokenizer(str(path))
    assert tok._tok.get_vocab_size(with_added_tokens=True) <= 400
    assert tok.vocab_size == 1001


def test_load_tokenizer_rejects_broken_json(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_tokenizer(str(path))
    assert "\n" not in str(info.value)
