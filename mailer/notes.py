"""The editor's note for an issue (`mailer digest note`): stored, and rendered safely.

At most one note waits for the next issue; digest.build attaches it to the digest it
builds, in the same transaction that reserves its articles, so it appears in exactly one
issue (a slot skipped for want of articles leaves it waiting). It is rendered with
markdown-it-py with raw HTML off (any `<` in it is text), no images (remote content in a
mail tracks its reader) and only absolute http(s) and mailto: links (anything else stays
text), so a note can put nothing in a mail but paragraphs, emphasis, lists, quotes, code
and safe links. Setting one takes the same cross-host lock as building a digest.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

from markupsafe import Markup
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mailer.articles import is_http_url
from mailer.db import Database, serialise
from mailer.errors import InputError
from mailer.models import EditorNote, utcnow

NOTE_MAX_CHARS = 10_000


def waiting_note(s: Session) -> EditorNote | None:
    return s.scalar(select(EditorNote).where(EditorNote.digest_id.is_(None)))


def set_note(db: Database, markdown: str) -> str:
    """The editor's note for the next issue (replacing any); the note as stored."""
    markdown = markdown.replace("\r\n", "\n").strip()
    if not markdown:
        raise InputError("the note is empty (mailer digest note --clear removes it)")
    if len(markdown) > NOTE_MAX_CHARS:
        raise InputError(f"the note is longer than {NOTE_MAX_CHARS} characters")
    with db.session() as s:
        serialise(s, "note")  # on PostgreSQL too, two editors never leave two waiting notes
        s.execute(delete(EditorNote).where(EditorNote.digest_id.is_(None)))
        s.add(EditorNote(markdown=markdown, set_at=utcnow()))
    return markdown


def next_note(db: Database) -> str:
    """The note waiting for the next issue, "" when there is none."""
    with db.reader() as s:
        note = waiting_note(s)
        return note.markdown if note else ""


def clear_note(db: Database) -> bool:
    """Remove the note for the next issue; whether there was one."""
    with db.session() as s:
        return bool(s.execute(delete(EditorNote).where(EditorNote.digest_id.is_(None))).rowcount)


def _safe_link(url: str) -> bool:
    """The only links a note may carry (markdown-it leaves any other as plain text)."""
    if url.startswith("mailto:"):
        address = url.removeprefix("mailto:")
        return bool(re.fullmatch(r"[^\s@<>\"]+@[^\s@<>\"]+", address))
    return is_http_url(url)


def _markdown() -> Any:
    from markdown_it import MarkdownIt  # comes with rich; loaded only to render

    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.disable("image")
    md.validateLink = _safe_link
    return md


def note_html(markdown: str) -> Markup:
    """The note as HTML: markdown-it-py's output with raw HTML escaped, no images, and safe
    links only (see the module docstring); empty for no note."""
    return Markup(_markdown().render(markdown) if markdown.strip() else "")


def note_text(markdown: str, width: int = 72) -> str:
    """The note as plain text for the text part: paragraphs, headings and list items
    wrapped at `width` between words, a link as "text (url)", code blocks as they are,
    quotes prefixed with "> "; blocks separated by a blank line, the items of one list by
    none."""
    if not markdown.strip():
        return ""
    blocks: list[tuple[str, int]] = []  # (text, the list it is an item of, or -1)
    lists: list[list[Any]] = []  # per open list: [ordered, next number, its token's index]
    quote = ""
    marker = ""  # the marker of a list item whose first block is still to come
    for index, token in enumerate(_markdown().parse(markdown)):
        indent = quote + "   " * max(len(lists) - 1, 0)
        if token.type == "blockquote_open":
            quote += "> "
        elif token.type == "blockquote_close":
            quote = quote[:-2]
        elif token.type in ("bullet_list_open", "ordered_list_open"):
            lists.append([token.type == "ordered_list_open", int(token.attrGet("start") or 1), index])
        elif token.type in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
        elif token.type == "list_item_open":
            ordered, number, _ = lists[-1]
            marker = f"{number}. " if ordered else "- "
            lists[-1][1] = number + 1
        elif token.type == "inline":
            first = indent + marker
            rest = indent + " " * len(marker) if lists else indent
            text = textwrap.fill(
                _inline_text(token.children or []),
                width,
                initial_indent=first,
                subsequent_indent=rest,
                break_long_words=False,
                break_on_hyphens=False,
            )
            blocks.append((text, lists[-1][2] if lists else -1))
            marker = ""
        elif token.type in ("fence", "code_block"):
            lines = token.content.rstrip("\n").split("\n")
            blocks.append(("\n".join((indent + "    " + ln).rstrip() for ln in lines), -1))
        elif token.type == "hr":
            blocks.append((indent + "* * *", -1))
    out = ""
    for i, (text, in_list) in enumerate(blocks):
        if i:
            out += "\n" if in_list >= 0 and in_list == blocks[i - 1][1] else "\n\n"
        out += text
    return out


def _inline_text(children: list[Any]) -> str:
    parts: list[str] = []
    links: list[tuple[str, int]] = []  # (href, where its text starts in parts)
    for child in children:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif child.type == "link_open":
            links.append((str(child.attrGet("href") or ""), len(parts)))
        elif child.type == "link_close" and links:
            href, start = links.pop()
            shown = "".join(parts[start:])
            if href.removeprefix("mailto:") != shown:
                parts.append(f" ({href})")
    return "".join(parts)
