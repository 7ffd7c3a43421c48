"""Record formats: one dataset record -> token ids and a loss mask, each a small pure function.

Every formatter returns ``(ids, train)`` where ``train[i]`` says whether token i is a prediction
target (1) or context only (0). The end-of-document token is appended and trained on, so the
model learns where documents end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError, DataError

Format = Literal["text", "prompt_completion", "columns", "conversation"]


@dataclass
class ColumnSpec:
    """One column of a multi-column template."""

    name: str
    prefix: str = ""
    suffix: str = ""
    train: bool = True  # whether this column's tokens (with its prefix/suffix) are loss targets


@dataclass
class FormatConfig:
    format: Format = "text"
    text_column: str = "text"
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    mask_prompt: bool = True
    columns: list[ColumnSpec] = field(default_factory=list)
    conversation_column: str = "conversations"
    chat_template: Literal["rwkv", "hf"] = "rwkv"
    train_on: Literal["assistant", "all"] = "assistant"

    def __post_init__(self) -> None:
        self.columns = [c if isinstance(c, ColumnSpec) else ColumnSpec(**c) for c in self.columns]
        if self.format == "columns" and not self.columns:
            raise ConfigError("data.format=columns needs data.columns: a list of {name, prefix, suffix, train}")


def _column(record: dict, name: str, setting: str):
    if name not in record:
        raise DataError(f"a record has no column {name!r} (set data.{setting}; columns: {sorted(record)})")
    return record[name]


def _text(record: dict, name: str, setting: str) -> str:
    """A text column's value; null or a number is refused rather than trained on as "None" or "0"."""
    value = _column(record, name, setting)
    if value is None:
        raise DataError(f"column {name!r} is null (remove the record or fill it in)")
    if not isinstance(value, str):
        raise DataError(f"column {name!r} holds {type(value).__name__} {str(value)[:40]!r}, not text")
    return value


def _pieces_to_ids(pieces: list[tuple[str, bool]], tokenizer) -> tuple[list[int], list[int]]:
    ids, train = [], []
    for text, is_target in pieces:
        piece_ids = tokenizer.encode(text) if text else []
        ids += piece_ids
        train += [int(is_target)] * len(piece_ids)
    ids.append(tokenizer.eos_id)
    train.append(1)
    return ids, train


def text_pieces(record: dict, cfg: FormatConfig) -> list[tuple[str, bool]]:
    return [(_text(record, cfg.text_column, "text_column"), True)]


def prompt_completion_pieces(record: dict, cfg: FormatConfig) -> list[tuple[str, bool]]:
    prompt = _text(record, cfg.prompt_column, "prompt_column")
    completion = _text(record, cfg.completion_column, "completion_column")
    return [(prompt, not cfg.mask_prompt), (completion, True)]


def column_pieces(record: dict, cfg: FormatConfig) -> list[tuple[str, bool]]:
    return [(c.prefix + _text(record, c.name, "columns") + c.suffix, c.train) for c in cfg.columns]


ROLE_NAMES = {"user": "User", "human": "User", "assistant": "Assistant", "gpt": "Assistant",
              "bot": "Assistant", "system": "System"}


def _turns(record: dict, cfg: FormatConfig) -> list[tuple[str, str]]:
    """(role, content) pairs from role/content (OpenAI style) or from/value (ShareGPT) turns."""
    turns = _column(record, cfg.conversation_column, "conversation_column")
    if not isinstance(turns, list) or not turns:
        raise DataError(f"column {cfg.conversation_column!r} must hold a non-empty list of turns")
    out = []
    for turn in turns:
        if isinstance(turn, dict) and "role" in turn and "content" in turn:
            out.append((str(turn["role"]).lower(), str(turn["content"])))
        elif isinstance(turn, dict) and "from" in turn and "value" in turn:
            out.append((str(turn["from"]).lower(), str(turn["value"])))
        else:
            raise DataError(f"a conversation turn has neither role/content nor from/value keys: {str(turn)[:80]}")
    return out


def conversation_pieces(record: dict, cfg: FormatConfig) -> list[tuple[str, bool]]:
    """RWKV's chat style: 'User: ...\\n\\nAssistant: ...\\n\\n', loss on assistant replies by default.

    The role label is context; the reply and its closing blank line are targets, so the model
    learns both the answer and where it ends.
    """
    pieces = []
    for role, content in _turns(record, cfg):
        name = ROLE_NAMES.get(role, role.capitalize())
        is_target = cfg.train_on == "all" or name == "Assistant"
        pieces.append((f"{name}:", cfg.train_on == "all"))
        pieces.append((" " + content.strip() + "\n\n", is_target))
    return pieces


def hf_chat_pieces(record: dict, cfg: FormatConfig, tokenizer) -> list[tuple[str, bool]]:
    """The tokenizer's own chat template, rendered turn by turn so the assistant spans stay known.

    An assistant turn's header (what ``add_generation_prompt`` renders) is context, its reply a target.
    """
    template = getattr(tokenizer, "apply_chat_template", None)
    if template is None:
        raise ConfigError("data.chat_template=hf needs a Hugging Face tokenizer folder or hub name with a chat template")
    messages = [{"role": "assistant" if ROLE_NAMES.get(r) == "Assistant" else r, "content": c}
                for r, c in _turns(record, cfg)]
    pieces, rendered = [], ""
    for i, message in enumerate(messages):
        text = template(messages[: i + 1], tokenize=False)
        if message["role"] == "assistant":
            header = template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
            if header.startswith(rendered) and text.startswith(header):
                pieces.append((header[len(rendered):], cfg.train_on == "all"))
                rendered = header
            pieces.append((text[len(rendered):], True))
        else:
            pieces.append((text[len(rendered):], cfg.train_on == "all"))
        rendered = text
    return pieces


def format_record(record: dict, cfg: FormatConfig, tokenizer) -> tuple[list[int], list[int]]:
    if cfg.format == "text":
        pieces = text_pieces(record, cfg)
    elif cfg.format == "prompt_completion":
        pieces = prompt_completion_pieces(record, cfg)
    elif cfg.format == "columns":
        pieces = column_pieces(record, cfg)
    elif cfg.chat_template == "hf":
        pieces = hf_chat_pieces(record, cfg, tokenizer)
    else:
        pieces = conversation_pieces(record, cfg)
    return _pieces_to_ids(pieces, tokenizer)
