"""A feed's text as clean text: titles, and an item's HTML or plain text as paragraphs; and
character references that name no character made into ones that do. For mailer.feeds.parse.

What holds, and why:
* **Text only.** No tag, attribute or URL of the markup is kept. Scripts, styles, embeds,
  media, forms, images, comments and a document's head are dropped whole, their text
  included: it is never text for a reader. Elements HTML5 calls void are never containers,
  though libxml2 (an HTML 4 parser) makes some of them one, so the text after an <embed> is
  read, not lost with it.
* **Block elements split paragraphs.** p, div, li, h1-h6, blockquote, tr… start and end one,
  and so do two <br> in a row (one is a space); table cells are separated by a space within
  their row. Markup with no block element is text with a few inline tags, so its blank lines
  separate paragraphs, as plain text's do (inside <pre> they always do). Every paragraph is
  one clean line (mailer.parsing.clean_line, soft hyphens removed); one without a letter or
  digit is dropped.
* **Titles are HTML only when they hold markup.** Atom says what a title is (type="text" is
  literal); RSS does not, and feedparser guesses "HTML" on a lone entity. Here an RSS title
  is HTML when lxml finds an element in it: "<b>A &amp; B</b>" is "A & B", while
  "&amp;amp;" (read by XML as "&amp;") is what the feed says and is left as it is.
* **Never raises** on what a feed sends: NULs are removed, markup read as XHTML that is not
  well-formed is read as HTML, and what lxml cannot read at all (nothing but comments or
  whitespace) has no paragraphs. The tree is walked without recursion, so an element nested
  deeper than Python's stack allows is read too. A prefixed tag name (Word's <o:p>) is read
  by its local name.
* **Nothing is fetched.** lxml's parsers run with no_network; the XML one also loads no DTD
  and resolves no entity. `base_url` only names the document: no URL is in the output.
* **Safe in parallel.** Every call makes its own lxml parser (one serves one thread at a
  time, and polls parse in parallel).
* `fix_char_refs` changes only the numeric character references that name no character:
  every other byte of a feed reaches its parser as it came.
"""

from __future__ import annotations

import re
from typing import Any

import lxml.etree as etree
import lxml.html

from mailer.parsing import clean_line, paragraphs_of, squash

# fmt: off
# Elements whose content is never text for a reader: code, embeds, media fallbacks ("your
# browser does not support video"), forms, and a full document's head.
_DROP = frozenset({
    "script", "style", "noscript", "iframe", "frame", "frameset", "object", "embed", "applet", "param",
    "template", "svg", "math", "form", "button", "select", "textarea", "input", "head", "title", "meta",
    "link", "base", "canvas", "audio", "video", "source", "track", "img", "picture", "map", "area"
})
# Void in HTML5, so never a container: libxml2 (an HTML 4 parser) makes some of them one
# (<embed> swallows what follows), so what it puts inside them is read, not dropped.
_VOID = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr"
})
# Elements that start and end a paragraph.
_BLOCK = frozenset({
    "address", "article", "aside", "blockquote", "caption", "center", "dd", "details", "dialog", "dir",
    "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6",
    "header", "hgroup", "hr", "legend", "li", "main", "menu", "nav", "ol", "p", "pre", "section",
    "summary", "table", "tbody", "tfoot", "thead", "tr", "ul"
})
# fmt: on
# Table cells: separated by a space, within their row's paragraph.
_CELLS = frozenset({"td", "th"})
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n\s*")
_CHAR_REF = re.compile(rb"&#(?:[xX]([0-9a-fA-F]{1,8})|([0-9]{1,10}));")


def title_text(detail: Any, atom: bool) -> str:
    """A title (or the feed's) as one clean line: Atom's type says whether it is markup; an RSS
    title is markup when it holds an element."""
    if not detail:
        return ""
    value = str(detail.get("value") or "")
    kind = detail.get("type") or "text/plain"
    markup = kind in _HTML_TYPES if atom else _has_markup(value)
    if markup:
        return " ".join(html_to_paragraphs(value, xhtml=kind == "application/xhtml+xml"))
    return clean_line(value)


def detail_paragraphs(detail: Any) -> tuple[list[str], bool]:
    """The paragraphs of one of feedparser's text details (an item's summary or one of its
    content: value, type, base), and whether they were read as HTML."""
    if not detail:
        return [], False
    value = str(detail.get("value") or "")
    kind = str(detail.get("type") or "text/html")
    if kind in _HTML_TYPES:
        return html_to_paragraphs(value, detail.get("base"), xhtml=kind == "application/xhtml+xml"), True
    if kind.startswith("text/"):
        return [p for p in paragraphs_of(value) if squash(p)], False
    return [], False  # out-of-line or binary content: no text here


def html_to_paragraphs(html: str, base_url: str | None = None, *, xhtml: bool = False) -> list[str]:
    """The text of an HTML fragment (or document) as clean paragraphs: block elements (p, div,
    li, h1-h6, blockquote, tr…) and <br><br> separate them; scripts, styles, embeds, forms,
    images and comments are dropped whole. Markup with no block element at all is text with a
    few inline tags, and its blank lines separate paragraphs, as plain text's do (so plain text
    gives its blank-line separated paragraphs). A paragraph without a letter or digit is dropped.

    `xhtml` reads the markup as XML first (Atom type="xhtml"), where <br></br> is one break and
    <script/> is empty; markup that is not well-formed falls back to HTML. `base_url` is handed
    to lxml as the document's address; the paragraphs hold no URL, so it changes no output."""
    html = html.replace("\x00", "")
    if not html.strip():
        return []
    data = html.encode("utf-8", "replace")
    root = None
    if xhtml:
        parser = etree.XMLParser(
            resolve_entities=False, no_network=True, load_dtd=False, remove_comments=True, remove_pis=True
        )
        try:
            root = etree.fromstring(b"<div>" + data + b"</div>", parser, base_url=base_url)
        except etree.XMLSyntaxError:
            root = None
    if root is None:
        try:
            root = lxml.html.document_fromstring(data, parser=_html_parser(True), base_url=base_url)
        except (etree.ParserError, etree.XMLSyntaxError, ValueError):
            return []  # nothing but comments or whitespace
    return _tree_paragraphs(root)


class _Paragraphs:
    """Collects text into paragraphs while a tree is walked."""

    def __init__(self, blank_lines_split: bool) -> None:
        self.paragraphs: list[str] = []
        self.blank_lines_split = blank_lines_split
        self.pre = 0  # depth inside <pre>, where blank lines separate paragraphs too
        self._pieces: list[str] = []
        self._breaks = 0  # <br> since the last text that was not whitespace

    def text(self, text: str) -> None:
        if text.strip():
            self._breaks = 0
        if self.blank_lines_split or self.pre:
            first, *rest = _BLANK_LINE.split(text)
            self._pieces.append(first)
            for part in rest:
                self.end()
                self._pieces.append(part)
        else:
            self._pieces.append(text)

    def line_break(self) -> None:
        # One <br> is a line break inside a paragraph (a space, on one line); two in a row
        # with nothing but whitespace between are how much HTML separates paragraphs.
        if self._breaks:
            self.end()
        else:
            self._pieces.append(" ")
            self._breaks = 1

    def end(self) -> None:
        text = clean_line("".join(self._pieces).replace("\u00ad", ""))
        self._pieces = []
        self._breaks = 0
        if squash(text):
            self.paragraphs.append(text)


def _tree_paragraphs(root: Any) -> list[str]:
    has_blocks = any(_tag(el) in _BLOCK for el in root.iter() if el is not root)
    out = _Paragraphs(blank_lines_split=not has_blocks)
    # iterwalk, not recursion: a feed can nest elements deeper than Python's stack allows.
    walker = etree.iterwalk(root, events=("start", "end"))
    for event, el in walker:
        name = _tag(el)
        if event == "start":
            if not name or (name in _DROP and name not in _VOID):
                walker.skip_subtree()  # its "end" still comes, for its tail
                continue
            if name in _BLOCK:
                out.end()
            elif name == "br":
                out.line_break()
            elif name in _CELLS:
                out.text(" ")
            if name == "pre":
                out.pre += 1
            if el.text:
                out.text(el.text)
        else:
            if name in _BLOCK:
                out.end()
            elif name in _CELLS:
                out.text(" ")
            if name == "pre":
                out.pre -= 1
            if el.tail and el is not root:
                out.text(el.tail)
    out.end()
    return out.paragraphs


def _html_parser(remove_comments: bool = False) -> lxml.html.HTMLParser:
    # One per use: an lxml parser serves one thread at a time, and polls parse in parallel.
    return lxml.html.HTMLParser(
        encoding="utf-8", remove_comments=remove_comments, remove_pis=True, no_network=True
    )


def _tag(el: Any) -> str:
    """An element's local name, lower case; "" for comments, processing instructions, entities."""
    if not isinstance(el.tag, str):
        return ""
    # By hand, not etree.QName: the HTML parser keeps Word's "o:p" as the name, which QName
    # refuses (ValueError); "{namespace}name" is how the XML parser names xhtml's elements.
    return el.tag.rpartition("}")[2].rpartition(":")[2].lower()


def _has_markup(text: str) -> bool:
    if "<" not in text:
        return False
    try:
        root = lxml.html.document_fromstring(text.encode("utf-8", "replace"), parser=_html_parser())
    except (etree.ParserError, etree.XMLSyntaxError, ValueError):
        return False
    # A comment is markup too (this parser keeps them): "<!-- x -->" is not a title's text.
    return any(_tag(el) not in {"html", "head", "body"} for el in root.iter())


def fix_char_refs(body: bytes) -> bytes:
    """`body` with character references that name no character rewritten: a UTF-16 surrogate
    pair (how JavaScript escapes an emoji, "&#55357;&#56832;") becomes the one character it
    means, and a lone surrogate or a number past U+10FFFF becomes U+FFFD. Expat rejects them,
    and feedparser's fallback parser then raises on them, losing the whole feed."""
    if b"&#" not in body:
        return body
    consumed = -1  # where the low half of a pair just rewritten ends: that match is dropped

    def fix(match: re.Match[bytes]) -> bytes:
        nonlocal consumed
        if match.start() == consumed:
            return b""
        code = _char_ref(match)
        if code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF:
            return match.group(0)
        if 0xD800 <= code <= 0xDBFF:
            low = _CHAR_REF.match(body, match.end())
            if low and 0xDC00 <= _char_ref(low) <= 0xDFFF:
                consumed = match.end()
                return b"&#x%X;" % (0x10000 + ((code - 0xD800) << 10) + (_char_ref(low) - 0xDC00))
        return b"&#xFFFD;"

    return _CHAR_REF.sub(fix, body)


def _char_ref(match: re.Match[bytes]) -> int:
    hexa, decimal = match.group(1), match.group(2)
    return int(hexa, 16) if hexa else int(decimal)
