"""The digest's HTML as mail clients show it: the final HTML (premailer's output, what
`digest.preview` returns and every message carries) in Debian's Chromium driven by
Playwright, and its CSS checked against the caniemail data.

Invariants:
- it fits a phone (no sideways scrolling at 375 or 320 px) with its `<style>` elements and
  without them, as Gmail's mobile web client shows it: the layout lives in inline styles and
  the `@media` rules hold no sizing; an unbreakable 70-letter word wraps;
- at desktop widths the content stays a centred column of at most 600 px: max-width on the
  card and on a `<div>` around it, and for Outlook for Windows a fixed 600 px table in
  `[if mso]` comments;
- in a dark colour scheme, where the client honours `prefers-color-scheme`, the page is
  dark and every text reaches WCAG contrast 4.5; in light mode (and wherever the dark rules
  are dropped) it is the light design, just as readable;
- what the layout depends on is supported by Gmail, Outlook and Apple Mail per caniemail
  (the npm package @jsx-email/doiuse-email, installed by `npm ci --prefix tools/email-check`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Literal

import cssutils
import pytest
from lxml import html as lxml_html
from playwright.sync_api import Browser, Page

from mailer import digest as digests
from mailer.articles import ArticleStore
from mailer.config import Config, load_config
from mailer.db import Database
from mailer.render import contrast, luminance
from tests.conftest import ROOT, SEEDS, write_config

EMAIL_CHECK = ROOT / "tools" / "email-check"
CLIENTS = ["gmail.*", "outlook.*", "apple-mail.*"]
# One unbreakable 70-character word: a long URL or name in a title must wrap, not widen.
LONG_WORD = "Supercalifragilistic" * 3 + "expialidocious"

REMOVE_STYLES = "document.querySelectorAll('style').forEach(s => s.remove())"
# Every element the reader reads, with its colour and the background it is painted on (the
# nearest ancestor's opaque background colour).
TEXT_COLOURS = """() => {
  const opaque = c => c && c !== 'transparent' && !/^rgba\\(.*,\\s*0\\)$/.test(c);
  const behind = el => {
    for (let e = el; e; e = e.parentElement) {
      const bg = getComputedStyle(e).backgroundColor;
      if (opaque(bg)) return bg;
    }
    return getComputedStyle(document.documentElement).backgroundColor;
  };
  const picks = ['.brand', '.issue', '.toc strong', '.toc a', '.sec', 'h2.t a', 'p.lead',
                 'a.more', '.foot p', '.foot a', '.web a'];
  return picks.flatMap(sel => Array.from(document.querySelectorAll(sel)).slice(0, 3).map(
    el => ({sel, color: getComputedStyle(el).color, background: behind(el)})));
}"""


@pytest.fixture
def final_html(db: Database, cfg: Config) -> str:
    """The next digest's HTML part exactly as it is mailed: the sample articles and one
    with an unbreakable word in its title and lead."""
    store = ArticleStore(db, cfg)
    # First, so that it is among the oldest unsent articles the digest holds.
    store.add(f"The {LONG_WORD} report", f"Its lead names {LONG_WORD} twice: {LONG_WORD}.")
    store.import_paths([str(SEEDS)])
    preview = digests.preview(db, cfg)
    assert preview is not None and f"The {LONG_WORD} report" in preview.html
    return preview.html


Scheme = Literal["light", "dark"]


def open_page(browser: Browser, html: str, width: int, scheme: Scheme = "light", styles: bool = True) -> Page:
    context = browser.new_context(viewport={"width": width, "height": 800}, color_scheme=scheme)
    page = context.new_page()
    page.set_default_timeout(5000)
    page.set_content(html)
    if not styles:
        page.evaluate(REMOVE_STYLES)
        assert page.evaluate("document.querySelectorAll('style').length") == 0
    page.emulate_media(color_scheme=scheme)
    return page


def rgb(css: str) -> str:
    """'rgb(31, 41, 55)' -> '#1f2937'."""
    parts = [int(float(x)) for x in re.findall(r"[\d.]+", css)[:3]]
    return "#" + "".join(f"{p:02x}" for p in parts)


def test_fits_a_phone_with_and_without_the_style_block_and_stays_a_column_on_desktop(
    browser: Browser, final_html: str
) -> None:
    for width in (375, 320):
        for styles in (True, False):
            page = open_page(browser, final_html, width, styles=styles)
            scroll = page.evaluate("document.scrollingElement.scrollWidth")
            card = page.locator("table.card").bounding_box()
            assert card is not None
            page.context.close()
            label = f"{width} px, {'with' if styles else 'without'} <style>"
            assert scroll <= width, f"{label}: scrolls sideways ({scroll} px wide)"
            assert card["x"] >= 0 and card["x"] + card["width"] <= width, label

    for width in (600, 1000, 1400):
        for styles in (True, False):
            page = open_page(browser, final_html, width, styles=styles)
            card = page.locator("table.card").bounding_box()
            scroll = page.evaluate("document.scrollingElement.scrollWidth")
            page.context.close()
            assert card is not None and scroll <= width
            assert card["width"] == min(width, 600), (width, styles, card)
            # Centred: the same margin left and right.
            assert abs(card["x"] - (width - card["x"] - card["width"])) <= 1, (width, card)


def test_dark_mode_is_dark_and_readable_and_light_mode_stays_light(
    browser: Browser, final_html: str, db: Database, tmp_path: Path
) -> None:
    doc = lxml_html.document_fromstring(final_html)
    metas = {m.get("name"): m.get("content") for m in doc.cssselect("meta[name]")}
    assert metas.get("color-scheme") == "light dark"
    assert metas.get("supported-color-schemes") == "light dark"
    # A black accent (section names, links) must not vanish on the dark card either.
    (tmp_path / "black").mkdir()
    black = load_config(str(write_config(tmp_path / "black", digest={"accent_color": "#000"})))
    black_preview = digests.preview(db, black)
    assert black_preview is not None

    # (html, colour scheme, <style> kept, dark expected)
    cases: list[tuple[str, Scheme, bool, bool]] = [
        (final_html, "light", True, False),
        (final_html, "dark", True, True),
        (final_html, "light", False, False),
        (final_html, "dark", False, False),
        (black_preview.html, "dark", True, True),
    ]
    for html, scheme, styles, dark_expected in cases:
        page = open_page(browser, html, 375, scheme=scheme, styles=styles)
        body = page.evaluate("getComputedStyle(document.body).backgroundColor")
        card = page.evaluate("getComputedStyle(document.querySelector('table.card')).backgroundColor")
        texts = page.evaluate(TEXT_COLOURS)
        page.context.close()
        label = f"{scheme}, {'with' if styles else 'without'} <style>"
        if dark_expected:
            assert luminance(rgb(body)) < 0.05 and luminance(rgb(card)) < 0.05, (label, body, card)
        else:
            assert luminance(rgb(body)) > 0.8 and luminance(rgb(card)) > 0.8, (label, body, card)
        assert {t["sel"] for t in texts} >= {"h2.t a", "p.lead", ".sec", ".foot p"}, texts
        for t in texts:
            ratio = contrast(rgb(t["color"]), rgb(t["background"]))
            assert ratio >= 4.5, f"{label}: {t['sel']} {t['color']} on {t['background']}: {ratio:.2f}"
        if dark_expected:
            # The main text is light on the dark card.
            main = [t for t in texts if t["sel"] in ("h2.t a", "p.lead")]
            assert all(luminance(rgb(t["color"])) > 0.5 for t in main), main


# The caniemail errors (a client drops the feature) that the digest accepts, and why each
# one leaves the layout intact. Anything else a target client drops fails the test.
DROPPED_AND_HARMLESS = {
    "Class selector": "<style> only: premailer copied each rule inline",
    "Type selector": "<style> only: premailer copied each rule inline",
    "Descendant combinator": "<style> only: premailer copied each rule inline",
    "@media": "refinements only (phone padding, dark colours); no sizing inside, checked below",
    "white-space": "nowrap keeps a contents entry on one line; without it the entry wraps",
    "word-break": "only Windows Mail drops it: there an over-long word widens the column",
    "overflow": "the hidden preheader; Outlook hides it with mso-hide:all",
    "<body> element": "the full-width wrapper table repeats the page background",
    "role attribute": "an accessibility hint for screen readers, no layout",
    "Local anchors": "the contents links do not jump; the sections are still below",
}
# What the fluid layout and the colours are made of: no target client may drop any.
LAYOUT = {"width", "max-width", "padding", "background", "background-color", "color", "font-size"}
# Declarations that size or place boxes: never inside @media, which Gmail's mobile web
# client and Outlook for Windows drop.
SIZING = {"width", "min-width", "max-width", "display", "float", "table-layout", "position"}

NODE_CHECK = r"""
const {DoIUseEmail} = require("@jsx-email/doiuse-email");
let input = "";
process.stdin.on("data", d => input += d).on("end", () => {
  const {html, clients, features, declarations} = JSON.parse(input);
  const page = new DoIUseEmail({emailClients: clients}).check(html);
  const support = {};
  for (const title of features) {
    const one = new DoIUseEmail({emailClients: clients});
    one.checkFeaturesSupport(title);
    support[title] = {errors: one.errors, warnings: one.warnings, notes: one.notes};
  }
  // check() reads only top-level rules: the declarations inside @media are checked here.
  const media = new DoIUseEmail({emailClients: clients});
  media.checkCSSDeclarations(declarations.map(([property, value]) => ({property, value})));
  process.stdout.write(JSON.stringify(
    {errors: page.errors || [], warnings: page.warnings, support, media: media.errors}));
});
"""


def caniemail(html: str, features: list[str], declarations: list[tuple[str, str]]) -> dict[str, Any]:
    """@jsx-email/doiuse-email on node: the errors and warnings for the whole HTML, the
    support of each named feature, and the errors for `declarations` (those in @media)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the caniemail check runs @jsx-email/doiuse-email on node")
    if not (EMAIL_CHECK / "node_modules" / "@jsx-email" / "doiuse-email").is_dir():
        pytest.fail(f"the caniemail checker is not installed: run npm ci --prefix {EMAIL_CHECK}")
    done = subprocess.run(
        [node, "-e", NODE_CHECK],
        input=json.dumps(
            {"html": html, "clients": CLIENTS, "features": features, "declarations": declarations}
        ),
        cwd=EMAIL_CHECK,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def dropped(messages: list[str]) -> dict[str, set[str]]:
    """caniemail error (or warning) messages -> {feature: {client, ...}}."""
    out: dict[str, set[str]] = {}
    for message in messages:
        m = re.fullmatch(r"`(.+)` is (?:not|only partially) supported by `(.+)`", message)
        assert m, message
        out.setdefault(m[1], set()).add(m[2])
    return out


def media_rules(html: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Every @media rule of the final HTML's <style> elements: its query and declarations
    (property, value, priority)."""
    out = []
    for style in lxml_html.document_fromstring(html).iter("style"):
        sheet = cssutils.parseString(style.text or "", validate=False)
        for rule in sheet:
            if rule.type == rule.MEDIA_RULE:
                declarations = [(p.name, p.value, p.priority) for r in rule for p in r.style]
                out.append((rule.media.mediaText, declarations))
    return out


def test_what_the_layout_depends_on_is_supported_by_gmail_outlook_and_apple_mail(final_html: str) -> None:
    rules = media_rules(final_html)
    in_media = [(name, value) for _, declarations in rules for name, value, _ in declarations]
    result = caniemail(final_html, ["@media (prefers-color-scheme)", "max-width"], in_media)
    errors = dropped(result["errors"])
    unexplained = {f: sorted(c) for f, c in errors.items() if f not in DROPPED_AND_HARMLESS}
    assert not unexplained, f"dropped by a target client and not known harmless: {unexplained}"
    assert not LAYOUT & set(errors), {f: errors[f] for f in LAYOUT & set(errors)}
    inline = {
        d.split(":", 1)[0].strip()
        for el in lxml_html.document_fromstring(final_html).iter()
        for d in (el.get("style") or "").split(";")
        if ":" in d
    }
    assert {"width", "max-width", "padding", "color"} <= inline, inline

    # @media is dropped by some (Gmail mobile web, Outlook for Windows): nothing in it sizes.
    assert rules
    for query, declarations in rules:
        sizing = [d for d in declarations if d[0] in SIZING]
        assert not sizing, f"@media {query} sizes boxes: {sizing}"

    # max-width is partial in Outlook for Windows (tables only) and Apple Mail for iOS
    # (not on tables): a <div> caps the column for the one, and for Outlook for Windows the
    # card sits in a fixed 600 px table that only it (mso) sees.
    max_width = result["support"]["max-width"]
    assert "outlook.windows" in dropped(max_width["warnings"])["max-width"]
    assert any("apple-mail.ios" in n and "<table>" in n for n in max_width["notes"]), max_width
    card = lxml_html.document_fromstring(final_html).cssselect("table.card")[0]
    caps = [
        el.tag
        for el in card.iterancestors()
        if el.tag != "table" and re.search(r"max-width:\s*600px", el.get("style") or "")
    ]
    assert caps, "no element but a <table> caps the column's width"
    assert re.search(r'<!--\[if mso\]><table [^>]*width="600"', final_html)
    assert final_html.count("<!--[if mso]>") == final_html.count("<![endif]-->") >= 2

    # The dark colours hang on prefers-color-scheme, which Apple Mail honours; where it is
    # dropped (Gmail, Outlook for Windows) the light design stays, tested above.
    dark = [d for q, d in rules if "prefers-color-scheme" in q and "dark" in q]
    assert dark and all(priority == "important" for _, _, priority in dark[0]), dark
    support = result["support"]["@media (prefers-color-scheme)"]
    assert not [e for e in support["errors"] if "apple-mail" in e], support
    # ... and Apple Mail takes every declaration inside the @media rules.
    assert not [e for e in result["media"] if "apple-mail" in e], result["media"]
