"""Tokenizers that turn training text into token ids.

The RWKV "world" tokenizer is reimplemented here (rather than imported from
the ``rwkv`` package) so that data preparation has no dependency on inference
code; only its vocabulary file is borrowed. Its ids must match the reference
``rwkv.rwkv_tokenizer.TRIE_TOKENIZER`` exactly, or pretrained checkpoints
would see different tokens than they were trained on.
"""

import ast
import functools
import importlib.resources
from pathlib import Path

from rwkv_infctx.errors import ConfigError, DataError

_WORLD_VOCAB_NAME = "rwkv_vocab_v20230424.txt"
_WORLD_VOCAB_SIZE = 65536
# GPT-NeoX-20B's tokenizer (RWKV-4 "Pile" models) ships inside this package: see tokenizers/NOTICE.md.
_NEOX_TOKENIZER_FILE = "tokenizers/20B_tokenizer.json"


def _parse_vocab_line(line: str) -> tuple[int, bytes]:
    """Read ``<id> <python literal> <byte length>``; the length guards against misparses."""
    first, last = line.index(" "), line.rindex(" ")
    token = ast.literal_eval(line[first:last].strip())
    if isinstance(token, str):
        token = token.encode("utf-8")
    if not isinstance(token, bytes) or len(token) != int(line[last:]):
        raise ValueError(f"malformed vocabulary line: {line!r}")
    return int(line[:first]), token


def _build_trie(id_to_bytes: list[bytes]) -> dict:
    """Nested dicts ``{byte: [token id or None, children]}``.

    Plain dicts and lists are the fastest lookup structure pure Python offers;
    the id sits next to the children so one lookup serves both.
    """
    root: dict = {}
    for token_id, token in enumerate(id_to_bytes):
        children = root
        for pos, byte in enumerate(token):
            entry = children.get(byte)
            if entry is None:
                entry = children[byte] = [None, {}]
            if pos == len(token) - 1:
                entry[0] = token_id
            children = entry[1]
    return root


@functools.lru_cache(maxsize=4)
def _load_world_vocab(path: str) -> tuple[list[bytes], dict]:
    """Parse once per process: building the trie takes a noticeable fraction of a second."""
    id_to_bytes = [b""] * _WORLD_VOCAB_SIZE
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                token_id, token = _parse_vocab_line(line.rstrip("\n"))
                id_to_bytes[token_id] = token
    return id_to_bytes, _build_trie(id_to_bytes)


def _default_world_vocab():
    """The vocabulary file ships with the ``rwkv`` pip package, so we do not carry a copy."""
    try:
        return importlib.resources.files("rwkv") / _WORLD_VOCAB_NAME
    except ModuleNotFoundError:
        raise ConfigError(
            "the world tokenizer needs the 'rwkv' package for its vocabulary: pip install rwkv"
        ) from None


class WorldTokenizer:
    """RWKV "world" tokenizer: greedy longest match over UTF-8 bytes.

    Greedy longest match (not BPE merges) is what the RWKV world models were
    trained with, so it is reproduced exactly, including for text whose
    characters split across several byte tokens.
    """

    vocab_size = _WORLD_VOCAB_SIZE
    eos_id = 0  # id 0 has no bytes; RWKV uses it to separate documents

    def __init__(self, vocab_path=None):
        if vocab_path is None:
            vocab_path = _default_world_vocab()
        self.vocab_path = str(vocab_path)
        self._id_to_bytes, self._trie = _load_world_vocab(self.vocab_path)

    def encode(self, text: str) -> list[int]:
        return self.encode_bytes(text.encode("utf-8"))

    def encode_bytes(self, data: bytes) -> list[int]:
        """Walk the trie from each token start, remembering the last complete token.

        Every single byte is a token, so the walk always yields one.
        """
        root, out, pos, end = self._trie, [], 0, len(data)
        append = out.append
        while pos < end:
            best, children = root[data[pos]]
            nxt = best_end = pos + 1
            while nxt < end:
                entry = children.get(data[nxt])
                if entry is None:
                    break
                nxt += 1
                if entry[0] is not None:
                    best, best_end = entry[0], nxt
                children = entry[1]
            append(best)
            pos = best_end
        return out

    def decode(self, ids) -> str:
        """Invalid UTF-8 (e.g. a character cut mid-sequence) becomes U+FFFD instead of failing."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids) -> bytes:
        """Ids with no bytes (0 and the unassigned 65530..65535) decode to nothing.

        Out-of-range ids raise instead, because a negative id would otherwise
        silently index from the end of the table.
        """
        ids, table = list(ids), self._id_to_bytes
        if ids and (min(ids) < 0 or max(ids) >= len(table)):
            bad = next(i for i in ids if not 0 <= i < len(table))
            raise DataError(f"token id {bad} is outside the world vocabulary (0..{len(table) - 1})")
        return b"".join([table[i] for i in ids])


class HFTokenizerFile:
    """Adapter giving a Hugging Face ``tokenizer.json`` the same interface as WorldTokenizer."""

    def __init__(self, path):
        from tokenizers import Tokenizer

        self.path = str(path)
        try:
            self._tok = Tokenizer.from_file(self.path)
        except Exception as exc:  # the library raises bare Exceptions on bad files
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"cannot load tokenizer file {self.path}: {first_line}") from None
        self.vocab_size = self._embedding_rows()
        eos = self._tok.token_to_id("<|endoftext|>")
        self.eos_id = 0 if eos is None else eos

    def _embedding_rows(self) -> int:
        """Rows the embedding needs: one past the highest id, even if the file leaves ids unused.

        ``get_vocab_size`` counts tokens, which equals that only for gap-free files (NeoX: 50277).
        """
        counted = self._tok.get_vocab_size(with_added_tokens=True)
        ids = self._tok.get_vocab(with_added_tokens=True).values()
        return max(counted, max(ids, default=-1) + 1)

    def encode(self, text: str) -> list[int]:
        # Special tokens are left out: the data pipeline inserts eos_id itself.
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)


class HFAutoTokenizer:
    """A ``transformers`` tokenizer (hub name or saved folder): gives access to its chat template."""

    def __init__(self, name: str):
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise ConfigError(f"data.tokenizer={name!r} needs `pip install transformers`") from None
        try:
            self._tok = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"cannot load Hugging Face tokenizer {name!r}: {first_line}") from None
        self.path = name
        self.vocab_size = len(self._tok)
        self.eos_id = self._tok.eos_token_id if self._tok.eos_token_id is not None else 0

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False,
                            add_generation_prompt: bool = False) -> str:
        if not getattr(self._tok, "chat_template", None):
            raise ConfigError(f"the tokenizer {self.path!r} has no chat template (use data.chat_template: rwkv)")
        return self._tok.apply_chat_template(messages, tokenize=tokenize, add_generation_prompt=add_generation_prompt)


def _looks_like_hub_name(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def load_tokenizer(name: str):
    """Map the ``data.tokenizer`` setting to a tokenizer, failing with a one-line ConfigError."""
    if name == "world":
        return WorldTokenizer()
    path = Path(name).expanduser()
    if path.is_dir() and (path / "tokenizer_config.json").is_file():
        return HFAutoTokenizer(str(path))  # a saved transformers tokenizer, chat template included
    if path.is_dir() and (path / "tokenizer.json").is_file():
        return HFTokenizerFile(path / "tokenizer.json")
    if path.is_file() and path.suffix == ".json":
        return HFTokenizerFile(path)
    if name == "neox":
        return HFTokenizerFile(importlib.resources.files(__package__) / _NEOX_TOKENIZER_FILE)
    if not path.exists() and _looks_like_hub_name(name):
        return HFAutoTokenizer(name)
    raise ConfigError(
        f"data.tokenizer={name!r} is neither 'world', 'neox', a tokenizer.json file, a tokenizer folder "
        "nor a Hugging Face hub name (org/name)"
    )
