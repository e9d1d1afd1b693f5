"""A feed item's whole article, for feeds with `fetch_full_text`: its page fetched with the
feed's own timeouts and cap (mailer.feeds.fetch), the article extracted by trafilatura
(made for exactly this: boilerplate, menus and comments left out), as clean paragraphs."""

from __future__ import annotations

import httpx

from mailer.feeds.fetch import Limits, fetch
from mailer.parsing import clean_line, squash

_ACCEPT = "text/html, application/xhtml+xml;q=0.9, */*;q=0.5"


def full_text(client: httpx.Client, url: str, limits: Limits, title: str = "") -> tuple[list[str], str]:
    """(paragraphs, "") or ([], one line saying why there are none). A first paragraph that
    repeats the title (the page's own heading) is left out: the digest shows the title."""
    page = fetch(client, url, limits=limits, accept=_ACCEPT)
    if not page.ok:
        return [], page.error or f"HTTP {page.status}"
    # Imported here: trafilatura and its helpers take a quarter of a second to import,
    # and only feeds with full text need them.
    import trafilatura

    try:
        text = trafilatura.extract(page.body, url=page.url, include_comments=False, include_tables=False)
    except Exception as exc:  # a parser's failure on a hostile page is that page's problem only
        return [], f"extraction failed: {type(exc).__name__}"
    paragraphs = [p for p in (clean_line(line) for line in (text or "").splitlines()) if p]
    if paragraphs and title and squash(paragraphs[0]) == squash(title):
        paragraphs = paragraphs[1:]
    if not paragraphs:
        return [], "no article text found on the page"
    return paragraphs, ""
