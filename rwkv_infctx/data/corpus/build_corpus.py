"""Regenerate ``english_prose.jsonl``, the default training corpus.

The text comes from CPython's ``pydoc_data.topics`` (the language reference
shown by ``help()``), because it is real English prose that ships with every
Python install and carries a permissive license. Its content differs between
Python versions, so the generated jsonl is committed: every Python version
then trains on the same text. Run ``python build_corpus.py`` to rebuild it.
"""

import json
import re
from pathlib import Path

MIN_DOC_CHARS = 1000  # shorter pieces are merged with the next section
MAX_DOC_CHARS = 8000  # longer sections are cut at paragraph breaks

# A heading is a title line underlined by a run of '=', '-', '*' or '~'.
_HEADING = re.compile(r"[^\n]+\n([=\-*~])\1+(\n|$)")


def _paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks, each keeping its trailing separator.

    Keeping the separators lets the documents be plain slices of the topic.
    """
    return [p for p in re.split(r"(?<=\n\n)(?=[^\n])", text) if p]


def split_topic(text: str) -> list[str]:
    """Cut one topic into documents at headings or, failing that, paragraphs."""
    docs, current = [], ""
    for para in _paragraphs(text):
        at_heading = _HEADING.match(para) is not None
        if current and (
            (at_heading and len(current) >= MIN_DOC_CHARS)
            or len(current) + len(para) > MAX_DOC_CHARS
        ):
            docs.append(current)
            current = ""
        current += para
    if docs and len(current) < MIN_DOC_CHARS and len(docs[-1] + current) <= MAX_DOC_CHARS:
        docs[-1] += current  # a short tail reads better with what precedes it
    else:
        docs.append(current)
    return [d.strip("\n").rstrip() for d in docs if d.strip()]


def build_english_prose(out_path) -> int:
    """Write the corpus as JSON lines ``{"text": ...}``; return the document count."""
    from pydoc_data.topics import topics

    docs = [doc for name in sorted(topics) for doc in split_topic(topics[name])]
    with open(out_path, "w", encoding="utf-8", newline="\n") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
    return len(docs)


if __name__ == "__main__":
    target = Path(__file__).with_name("english_prose.jsonl")
    print(f"wrote {build_english_prose(target)} documents to {target}")
