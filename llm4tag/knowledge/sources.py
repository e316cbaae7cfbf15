"""Domain-knowledge snippets from the tag vocabulary and from knowledge files (JSONL or Markdown)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Collection, Sequence
from pathlib import Path

from llm4tag.data import Tag, read_records
from llm4tag.encoded_text import readable_tag
from llm4tag.errors import DataError
from llm4tag.knowledge.entries import KnowledgeError, Snippet

logger = logging.getLogger("llm4tag.knowledge")

DEFAULT_MAX_CHARS = 300
_MAX_WARN_EXAMPLES = 5


def _trim(text: str, max_chars: int) -> str:
    """Whitespace collapsed, cut to at most max_chars at a word boundary with an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars - 1]
    space = cut.rfind(" ")
    if space > max_chars // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "…"


def vocabulary_snippets(tags: Sequence[Tag], max_chars: int = DEFAULT_MAX_CHARS) -> list[Snippet]:
    """One snippet per tag that has a description (id ``tag:<name>``, source ``vocabulary``)."""
    out = []
    for tag in tags:
        if tag.description and tag.description.strip():
            text = _trim(f"{readable_tag(tag.tag)}: {tag.description}", max_chars)
            out.append(Snippet(id=f"tag:{tag.tag}", text=text, tags=(tag.tag,), source="vocabulary"))
    return out


_MARKDOWN_SUFFIXES = (".md", ".markdown")
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
_HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE_RE = re.compile(r"^\s*(```|~~~)")
_COMMENT_RE = re.compile(r"<!--.*?-->", re.DOTALL)
_TAG_SEPARATORS_RE = re.compile(r"\s*(?:,|/|;|\||\s(?:vs\.?|versus)\s)\s*", re.IGNORECASE)
_BACKTICKED_RE = re.compile(r"`([^`]+)`")
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+")


def load_knowledge_file(
    path: str | os.PathLike[str],
    vocabulary: Collection[str] | None = None,
    *,
    strict: bool = False,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> list[Snippet]:
    """Read domain-knowledge snippets from a JSONL (``.jsonl``, ``.jsonl.gz``) or Markdown (``.md``) file.

    JSONL rows: ``text`` (required), ``tags`` (list of tag names, optional), ``id`` (optional; default
    ``<file name>:<line>``), ``title`` (optional, put before the text as ``"title: text"``). With a
    ``vocabulary``, unknown tags are dropped with a warning (a row left with none of its tags is skipped),
    or with ``strict=True`` rejected.

    Markdown: every ATX heading (``#`` to ``######``, outside code fences) starts a section, with id
    ``<file name>#<heading slug>``. A section is about the tags its heading names: the whole heading is a
    tag or its readable form (case-insensitive), or a list of them separated by ``,`` ``/`` ``;`` ``|`` or
    ``vs``, or it names tags in backticks (`` `card_arrival` ``). A heading that names no tag inherits the
    tags of the heading it is nested under; at top level its section is a general rule. Text before the
    first heading is a general rule; HTML comments are ignored. Without a vocabulary no heading names a
    tag. Snippet text is ``"<heading made readable>: <section text>"``.

    Texts longer than ``max_chars`` are split at paragraphs (then sentences, then words) into several
    snippets (ids suffixed ``/1``, ``/2``...). Problems raise DataError naming the file and the line.
    """
    spath = str(path)
    if max_chars < 40:
        raise KnowledgeError(f"max_chars must be at least 40, got {max_chars}")
    name = Path(spath).name
    lower = name.lower()
    vocab = None if vocabulary is None else set(vocabulary)
    if lower.endswith(_MARKDOWN_SUFFIXES):
        return _read_markdown(spath, vocab, strict, max_chars)
    if lower.endswith(_JSONL_SUFFIXES):
        return _read_jsonl_knowledge(spath, vocab, strict, max_chars)
    raise DataError(spath, "unsupported knowledge file extension; use .jsonl, .jsonl.gz, .md or .markdown")


def _read_jsonl_knowledge(path: str, vocab: set[str] | None, strict: bool, max_chars: int) -> list[Snippet]:
    name = Path(path).name
    out: list[Snippet] = []
    first_line: dict[str, int] = {}
    dropped: dict[str, None] = {}
    dropped_count = skipped_rows = 0
    for line, record in read_records(path):
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            problem = "missing (required)" if text is None else "must be a non-empty string"
            raise DataError(path, problem, line=line, field="text")
        title = record.get("title")
        if title is not None and not isinstance(title, str):
            raise DataError(path, "must be a string", line=line, field="title")
        snippet_id = record.get("id")
        if snippet_id is None:
            snippet_id = f"{name}:{line}"
        elif isinstance(snippet_id, int) and not isinstance(snippet_id, bool):
            snippet_id = str(snippet_id)
        elif not isinstance(snippet_id, str) or not snippet_id.strip():
            raise DataError(path, "must be a non-empty string", line=line, field="id")
        if snippet_id in first_line:
            raise DataError(
                path,
                f"duplicate id '{snippet_id}' (first on line {first_line[snippet_id]})",
                line=line,
                field="id",
            )
        first_line[snippet_id] = line
        raw_tags = record.get("tags")
        if raw_tags is None:
            raw_tags = []
        if not isinstance(raw_tags, list) or not all(isinstance(t, str) and t.strip() for t in raw_tags):
            raise DataError(path, "must be a list of non-empty strings", line=line, field="tags")
        tags = list(dict.fromkeys(raw_tags))
        if vocab is not None:
            unknown = [t for t in tags if t not in vocab]
            if unknown:
                if strict:
                    raise DataError(
                        path, f"tag '{unknown[0]}' is not in the vocabulary", line=line, field="tags"
                    )
                dropped_count += len(unknown)
                for tag in unknown[:_MAX_WARN_EXAMPLES]:
                    if len(dropped) < _MAX_WARN_EXAMPLES:
                        dropped.setdefault(tag, None)
                tags = [t for t in tags if t in vocab]
                if not tags:
                    skipped_rows += 1
                    continue
        prefix = f"{' '.join(title.split())}: " if title and title.strip() else ""
        out.extend(_snippets(snippet_id, prefix, _paragraphs(text), tuple(tags), name, max_chars))
    if dropped_count:
        logger.warning(
            "%s: dropped %d tag(s) not in the vocabulary, e.g. %s; skipped %d row(s) left with no tag",
            path,
            dropped_count,
            ", ".join(repr(t) for t in dropped),
            skipped_rows,
        )
    if not out:
        logger.warning("%s: no knowledge snippets in the file", path)
    return out


def _read_text(path: str) -> str:
    p = Path(path)
    if p.is_dir():
        raise DataError(path, "is a directory, expected a file")
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(path, "file not found") from exc
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror or exc}") from exc
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(path, f"not valid UTF-8 text: {exc.reason}", line=line) from exc


def _heading_tags(heading: str, lookup: dict[str, str], path: str, line: int, strict: bool) -> list[str]:
    """The tags a heading names (see load_knowledge_file); [] when it names none."""
    plain = heading.strip().strip("*").strip()
    whole = plain.strip("`'\"").strip().rstrip(":").strip().lower()
    if whole in lookup:
        return [lookup[whole]]
    parts = [p.strip().strip("`'\"").strip().lower() for p in _TAG_SEPARATORS_RE.split(plain)]
    parts = [p for p in parts if p]
    if len(parts) > 1 and all(p in lookup for p in parts):
        return list(dict.fromkeys(lookup[p] for p in parts))
    named = []
    for token in _BACKTICKED_RE.findall(plain):
        key = token.strip().lower()
        if key in lookup:
            named.append(lookup[key])
        elif strict:
            raise DataError(path, f"heading names `{token}`, which is not in the vocabulary", line=line)
        else:
            logger.warning(
                "%s, line %d: heading names `%s`, which is not in the vocabulary", path, line, token
            )
    return list(dict.fromkeys(named))


def _read_markdown(path: str, vocab: set[str] | None, strict: bool, max_chars: int) -> list[Snippet]:
    name = Path(path).name
    # Comments become blank lines of the same count, so that line numbers stay right.
    text = _COMMENT_RE.sub(lambda m: "\n" * m.group(0).count("\n"), _read_text(path))
    lookup: dict[str, str] = {}
    for tag in sorted(vocab or ()):
        lookup.setdefault(tag.lower(), tag)
    for tag in sorted(vocab or ()):
        lookup.setdefault(readable_tag(tag).lower(), tag)

    # Sections: (heading or None, line, tags, body lines)
    sections: list[tuple[str | None, int, tuple[str, ...], list[str]]] = [(None, 1, (), [])]
    stack: list[tuple[int, tuple[str, ...]]] = []  # (level, effective tags) of the enclosing headings
    in_fence = False
    for line_no, line in enumerate(text.splitlines(), 1):
        if _FENCE_RE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING_RE.match(line)
        if match is None:
            sections[-1][3].append(line)
            continue
        level, heading = len(match.group(1)), match.group(2).strip()
        while stack and stack[-1][0] >= level:
            stack.pop()
        own = _heading_tags(heading, lookup, path, line_no, strict) if lookup else []
        tags = tuple(own) if own else (stack[-1][1] if stack else ())
        stack.append((level, tags))
        sections.append((heading, line_no, tags, []))

    out: list[Snippet] = []
    used_ids: dict[str, int] = {}
    for heading, _, tags, body in sections:
        paragraphs = _paragraphs("\n".join(body))
        if not paragraphs:
            continue
        slug = re.sub(r"[^0-9a-z]+", "-", heading.lower()).strip("-") if heading else ""
        slug = slug or "preamble"
        used_ids[slug] = used_ids.get(slug, 0) + 1
        if used_ids[slug] > 1:
            slug = f"{slug}-{used_ids[slug]}"
        prefix = f"{readable_tag(heading.replace('`', '').rstrip(':'))}: " if heading else ""
        out.extend(_snippets(f"{name}#{slug}", prefix, paragraphs, tags, name, max_chars))
    if not out:
        logger.warning("%s: no knowledge snippets in the file", path)
    return out


def _paragraphs(text: str) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.rstrip() for line in block.strip("\n").splitlines()]
        paragraph = "\n".join(line for line in lines if line.strip()).strip()
        if paragraph:
            out.append(paragraph)
    return out


def _split_long(text: str, budget: int) -> list[str]:
    """Pieces of at most budget characters: whole sentences where they fit, else words, else characters."""
    pieces: list[str] = []
    for sentence in _SENTENCE_RE.split(text):
        if len(sentence) <= budget:
            pieces.append(sentence)
            continue
        for word in sentence.split():
            while len(word) > budget:
                pieces.append(word[:budget])
                word = word[budget:]
            if word:
                pieces.append(word)
    return _pack(pieces, budget, " ")


def _pack(pieces: list[str], budget: int, joiner: str) -> list[str]:
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if not current:
            current = piece
        elif len(current) + len(joiner) + len(piece) <= budget:
            current += joiner + piece
        else:
            chunks.append(current)
            current = piece
    if current:
        chunks.append(current)
    return chunks


def _snippets(
    base_id: str, prefix: str, paragraphs: list[str], tags: tuple[str, ...], source: str, max_chars: int
) -> list[Snippet]:
    if len(prefix) > max_chars // 3:
        prefix = _trim(prefix.rstrip(": "), max_chars // 3) + ": "
    budget = max_chars - len(prefix)
    units: list[str] = []
    for paragraph in paragraphs:
        units.extend([paragraph] if len(paragraph) <= budget else _split_long(paragraph, budget))
    chunks = _pack(units, budget, "\n")
    return [
        Snippet(
            id=base_id if len(chunks) == 1 else f"{base_id}/{k}",
            text=prefix + chunk,
            tags=tags,
            source=source,
        )
        for k, chunk in enumerate(chunks, 1)
    ]
