"""Article files to clean articles: decoding, boilerplate and site chrome, paragraphs.

The input is real-world text: exports separated by a site's promotional footer (spelt
several ways), and scraped pages with ads, comment widgets and "Related Articles" teasers.
What counts as boilerplate or chrome comes from config, so a new source needs no code.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field

from mailer.errors import InputError
from mailer.settings import ArticlesConfig

MAX_TITLE_CHARS = 300
# A paragraph that may be a headline left behind by a missing footer (see _split_untitled).
_MAX_HEADLINE_CHARS = 150
_MIN_HEADLINE_WORDS = 3
# A line ending in one of these closes a sentence; a scraped line that does not is a
# fragment of the next one (link text torn out of its sentence by the scraper).
_SENTENCE_END = tuple(".!?:;\"'”’)]…")
# Control characters other than tab/newline never belong in an article (and must never
# reach a mail header).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u2060\ufeff]")
# Line breaks of any kind inside what must be one line become a space (so words do not
# run together and no CR/LF can ever reach a title or a mail header).
_BREAKS = re.compile(r"\r\n|[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
# Boilerplate close to a known line by this ratio (letters and digits only) is boilerplate
# too: it catches typos in footers that are not listed spelling by spelling.
_FUZZY_RATIO = 0.9


@dataclass
class ParsedArticle:
    title: str
    paragraphs: list[str]
    source_note: str = ""

    @property
    def body(self) -> str:
        return "\n\n".join(self.paragraphs)


@dataclass
class ParseResult:
    articles: list[ParsedArticle] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def squash(text: str) -> str:
    """Letters and digits only, case-folded: the form used to compare text loosely."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if ch.isalnum())


def fingerprint(body: str) -> str:
    """The de-duplication key: the same article keeps it across spacing, case and footers."""
    return hashlib.sha256(squash(body).encode("utf-8")).hexdigest()


def clean_line(line: str) -> str:
    """One line of text with control characters removed and spacing collapsed."""
    line = unicodedata.normalize("NFC", line)
    line = _BREAKS.sub(" ", line)
    line = _CONTROL.sub("", line)
    return _SPACES.sub(" ", line).strip()


def decode(data: bytes) -> str:
    """UTF-8 text (with or without a BOM) or an InputError saying it is not."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (invalid byte at offset {exc.start})") from None
    if "\x00" in text:
        raise InputError("not a text file (contains NUL bytes)")
    return text


class Cleaner:
    """Recognises boilerplate, chrome and related-article markers from config."""

    def __init__(self, cfg: ArticlesConfig) -> None:
        self.boilerplate = [s for s in (squash(b) for b in cfg.boilerplate) if s]
        self.chrome = [re.compile(p, re.IGNORECASE) for p in cfg.chrome]
        self.inline_chrome = [re.compile(p) for p in cfg.inline_chrome]
        self.related = [re.compile(p, re.IGNORECASE) for p in cfg.related_markers]
        self.import_related = cfg.import_related

    def is_boilerplate(self, line: str) -> bool:
        s = squash(line)
        if not s:
            return False
        for known in self.boilerplate:
            if s == known:
                return True
            if abs(len(s) - len(known)) <= len(known) * (1 - _FUZZY_RATIO) and (
                difflib.SequenceMatcher(None, s, known).ratio() >= _FUZZY_RATIO
            ):
                return True
        return False

    def is_chrome(self, line: str) -> bool:
        return any(p.fullmatch(line) for p in self.chrome)

    def strip_inline(self, paragraphs: list[str]) -> list[str]:
        """Remove chrome that a scraper glued into running text (e.g. "Photo: AFP")."""
        if not self.inline_chrome:
            return paragraphs
        out = []
        for text in paragraphs:
            for pattern in self.inline_chrome:
                text = pattern.sub(" ", text)
            text = " ".join(text.split())
            if squash(text):
                out.append(text)
        return out

    def is_related_marker(self, line: str) -> bool:
        return any(p.fullmatch(line) for p in self.related)

    def parse(self, text: str) -> ParseResult:
        lines = [clean_line(ln) for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
        result = ParseResult()
        main, teasers = lines, []
        for i, line in enumerate(lines):
            if self.is_related_marker(line):
                main, teasers = lines[:i], lines[i + 1 :]
                break
        for chunk in _split(main, self.is_boilerplate):
            self._add_chunk(chunk, result)
        if teasers:
            if self.import_related:
                for block in _split(teasers, lambda ln: not ln):
                    self._add_teaser(block, result)
            else:
                result.skipped.append("related-article teasers (import_related is off)")
        return result

    def _add_chunk(self, chunk: list[str], result: ParseResult) -> None:
        kept = [ln for ln in chunk if not self.is_chrome(ln)]
        while kept and not kept[0]:
            kept.pop(0)
        if not kept:
            return
        for title, body in _split_untitled(kept[0], kept[1:]):
            paragraphs = self.strip_inline(_paragraphs(body))
            problem = _title_problem(title)
            if problem:
                result.skipped.append(f"{problem}: {_preview(title)}")
            elif not paragraphs:
                result.skipped.append(f"title without a body: {_preview(title)}")
            else:
                result.articles.append(ParsedArticle(title, paragraphs))

    def _add_teaser(self, block: list[str], result: ParseResult) -> None:
        """A teaser is: source, age, "- source", title, text. Anything else is skipped."""
        lines = [ln for ln in block if ln and not self.is_chrome(ln)]
        if not lines:
            return
        source = lines[0]
        rest = [ln for ln in lines[1:] if ln != f"- {source}"]
        if len(rest) != len(lines) - 2 or len(rest) < 2 or _title_problem(rest[0]):
            result.skipped.append(f"unrecognised related-article block: {_preview(lines[0])}")
            return
        result.articles.append(ParsedArticle(rest[0], self.strip_inline(_paragraphs(rest[1:])), source))


def paragraphs_of(text: str, cleaner: Cleaner | None = None) -> list[str]:
    """The paragraphs of a typed-in body (blank-line separated; any line endings), with
    boilerplate lines (a source's footer) dropped when a cleaner is given."""
    lines = [clean_line(ln) for ln in _BREAKS.split(text)]
    if cleaner is not None:
        lines = [ln for ln in lines if not cleaner.is_boilerplate(ln)]
    return _paragraphs(lines)


def _split(lines: list[str], is_separator: object) -> list[list[str]]:
    chunks: list[list[str]] = [[]]
    for line in lines:
        if is_separator(line):  # type: ignore[operator]
            chunks.append([])
        else:
            chunks[-1].append(line)
    return [c for c in chunks if any(c)]


def _split_untitled(title: str, body: list[str]) -> list[tuple[str, list[str]]]:
    """Exports sometimes lose the footer between two articles; the next article's title
    then sits in the body as a paragraph of its own. In blank-line separated text, a
    single-line paragraph that looks like a headline (a few words, no closing punctuation)
    after a finished sentence and before more text starts a new article."""
    if "" not in body:
        return [(title, body)]
    parts: list[tuple[str, list[str]]] = [(title, [])]
    for i, line in enumerate(body):
        current = [ln for ln in parts[-1][1] if ln]
        if (
            _looks_like_headline(line)
            and i > 0
            and not body[i - 1]
            and i + 1 < len(body)
            and not body[i + 1]
            and any(body[i + 1 :])
            and current
            and current[-1].endswith(_SENTENCE_END)
        ):
            parts.append((line, []))
        else:
            parts[-1][1].append(line)
    return parts


def _looks_like_headline(line: str) -> bool:
    return (
        bool(line)
        and len(line) <= _MAX_HEADLINE_CHARS
        and len(line.split()) >= _MIN_HEADLINE_WORDS
        and not line.endswith(_SENTENCE_END)
        and not line.endswith((",", "-", "–", "—"))
    )


def _paragraphs(body: list[str]) -> list[str]:
    """Blank-line separated blocks (soft-wrapped lines joined); or, for scraped text with
    no blank lines, one paragraph per line with torn-off fragments joined back."""
    while body and not body[-1]:
        body = body[:-1]
    while body and not body[0]:
        body = body[1:]
    if not body:
        return []
    if "" in body:
        return [" ".join(block) for block in _split(body, lambda ln: not ln)]
    paragraphs: list[str] = []
    pending = ""
    for line in body:
        pending = f"{pending} {line}" if pending else line
        if pending.endswith(_SENTENCE_END):
            paragraphs.append(pending)
            pending = ""
    if pending:
        paragraphs.append(pending)
    return paragraphs


def _title_problem(title: str) -> str:
    if len(title) > MAX_TITLE_CHARS:
        return "first line is too long to be a title"
    if not squash(title):
        return "title has no letters or digits"
    return ""


def _preview(text: str, width: int = 60) -> str:
    return repr(text if len(text) <= width else text[: width - 1] + "…")
