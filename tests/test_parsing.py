"""Parsing article files: footers in every spelling, scraped-page chrome, teasers, messy input.

These run the real Cleaner with the [articles] section of the repository's config.toml
(no database), so what they check is what `mailer articles import` does with a file.
"""

from __future__ import annotations

import pytest

from mailer.config import ArticlesConfig, load_config
from mailer.errors import InputError
from mailer.parsing import Cleaner, clean_line, decode, fingerprint, paragraphs_of, squash
from tests.conftest import ROOT, SEEDS

FOOTER = "Would you like to learn more about AI, tech and digital diplomacy? If so, ask our Diplo chatbot!"
NBSP = "\u00a0"


@pytest.fixture(scope="module")
def articles_cfg() -> ArticlesConfig:
    return load_config(str(ROOT / "config.toml")).articles


@pytest.fixture(scope="module")
def cleaner(articles_cfg: ArticlesConfig) -> Cleaner:
    return Cleaner(articles_cfg)


def seed_text(prefix: str) -> str:
    (path,) = SEEDS.glob(f"{prefix}_*.txt")
    return decode(path.read_bytes())


def export(*articles: tuple[str, list[str]], footer: str = FOOTER) -> str:
    """An export-style file: title, blank line, paragraphs, footer after each article."""
    parts = []
    for title, paragraphs in articles:
        parts.append("\n\n".join([title, *paragraphs, footer]))
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------- footers


def test_every_footer_line_in_the_seed_exports_is_recognised_as_boilerplate(cleaner: Cleaner) -> None:
    footers = [
        clean_line(line)
        for path in sorted(SEEDS.glob("*.txt"))
        for line in decode(path.read_bytes()).splitlines()
        if "chatbot" in line.casefold()
    ]
    spellings = set(footers)
    assert len(footers) == 39 and len(spellings) >= 5  # the seeds really do vary
    assert [f for f in spellings if not cleaner.is_boilerplate(f)] == []


@pytest.mark.parametrize(
    "line",
    [
        FOOTER,
        FOOTER.rstrip("!"),
        "Would you like to learn more about AI, tech, and digital diplomacy? If so, ask our Diplo chatbot!",
        f"Would you like to learn more about AI, tech and digital diplomacy? If so,{NBSP}ask our Diplo "
        "chatbot",
        f"Would you like to learn more about{NBSP}AI, tech and digital diplomacyIf so,{NBSP}ask our "
        "Diplo chatbot!",
        "Would you like to learn more aboutAI, tech and digital diplomacyIf so, ask our Diplo chatbot!",
        "Would you like to learn more about AI, tech and digital diplomacy? If so, ask our"
        f"{NBSP}Diplo{NBSP}chatbot!",
        "  WOULD YOU LIKE TO LEARN MORE ABOUT AI, TECH AND DIGITAL DIPLOMACY? IF SO, ASK OUR DIPLO "
        "CHATBOT!  ",
    ],
)
def test_footer_spelling_variants_are_boilerplate(cleaner: Cleaner, line: str) -> None:
    assert cleaner.is_boilerplate(clean_line(line))


@pytest.mark.parametrize(
    "line",
    [
        "Would you like to lern more about AI, tech and digital diplomacy? If so, ask our Diplo chatbt!",
        "Would you like to learn more about AI, tech and digital diplomacy? If so ask our Diplo chat bot",
        "Would you liek to learn more about AI, tech and digitl diplomacy? If so, ask our Diplo chatbot!",
    ],
)
def test_typo_in_a_footer_is_caught_by_the_fuzzy_match(cleaner: Cleaner, line: str) -> None:
    assert cleaner.is_boilerplate(line)


@pytest.mark.parametrize(
    "line",
    [
        "Would you like to learn more about AI? Read our analysis of the chatbot market.",
        "Diplo chatbot",
        "AI",
        "",
        "Researchers in China have used AI to reveal how different species develop similar traits.",
    ],
)
def test_ordinary_lines_are_not_boilerplate(cleaner: Cleaner, line: str) -> None:
    assert not cleaner.is_boilerplate(line)


def test_footers_split_an_export_into_articles_and_none_is_kept(cleaner: Cleaner) -> None:
    text = export(
        ("First headline here", ["One sentence.", "Two sentences."]),
        ("Second headline here", ["Three sentences."]),
    )
    result = cleaner.parse(text)
    assert [(a.title, a.paragraphs) for a in result.articles] == [
        ("First headline here", ["One sentence.", "Two sentences."]),
        ("Second headline here", ["Three sentences."]),
    ]
    assert result.skipped == []


def test_footer_of_a_new_source_from_config_needs_no_code(articles_cfg: ArticlesConfig) -> None:
    other_footer = "Enjoyed this? Subscribe to The Example Weekly for more stories!"
    cfg = articles_cfg.model_copy(update={"boilerplate": [*articles_cfg.boilerplate, other_footer]})
    text = export(
        ("Alpha story headline", ["Alpha body."]),
        ("Beta story headline", ["Beta body."]),
        footer="Enjoyed this?  Subscribe to The Example Weekly for more stories",
    )
    unknown = Cleaner(articles_cfg).parse(text).articles
    assert any("Example Weekly" in a.title + a.body for a in unknown)  # not known yet: kept
    result = Cleaner(cfg).parse(text)
    assert [(a.title, a.body) for a in result.articles] == [
        ("Alpha story headline", "Alpha body."),
        ("Beta story headline", "Beta body."),
    ]


def test_seed_exports_parse_into_articles_without_any_footer_text(cleaner: Cleaner) -> None:
    for prefix in ("000", "001", "002", "004"):
        articles = cleaner.parse(seed_text(prefix)).articles
        assert len(articles) >= 9, prefix
        for a in articles:
            for text in (a.title, *a.paragraphs):
                assert "diplochatbot" not in squash(text), (prefix, a.title)
                assert not cleaner.is_boilerplate(text)


# ---------------------------------------------------------------- robust input


def test_text_without_a_footer_is_one_article(cleaner: Cleaner) -> None:
    result = cleaner.parse("Lonely headline\n\nFirst paragraph.\n\nSecond paragraph.\n")
    assert [(a.title, a.paragraphs) for a in result.articles] == [
        ("Lonely headline", ["First paragraph.", "Second paragraph."])
    ]


def test_crlf_bom_and_trailing_spaces_parse_like_clean_text(cleaner: Cleaner) -> None:
    clean = export(("A headline", ["Para one.", "Para two."]), ("B headline", ["Para three."]))
    messy_bytes = ("\ufeff" + clean.replace("\n", "  \t\r\n")).encode("utf-8")
    messy = cleaner.parse(decode(messy_bytes)).articles
    assert [(a.title, a.paragraphs) for a in messy] == [
        (a.title, a.paragraphs) for a in cleaner.parse(clean).articles
    ]
    assert messy[0].title == "A headline"  # no BOM glued to the first title


def test_old_mac_cr_line_endings_parse_like_clean_text(cleaner: Cleaner) -> None:
    clean = export(("A headline", ["Para one.", "Para two."]))
    assert [(a.title, a.paragraphs) for a in cleaner.parse(clean.replace("\n", "\r")).articles] == [
        ("A headline", ["Para one.", "Para two."])
    ]


def test_soft_wrapped_lines_of_a_paragraph_are_joined(cleaner: Cleaner) -> None:
    (article,) = cleaner.parse("Headline words\n\nThe first line\ncontinues here.\n\nNext.\n").articles
    assert article.paragraphs == ["The first line continues here.", "Next."]


def test_title_without_a_body_is_skipped_with_the_reason(cleaner: Cleaner) -> None:
    result = cleaner.parse(f"Just a headline\n\n{FOOTER}\n")
    assert result.articles == []
    assert result.skipped == ["title without a body: 'Just a headline'"]


def test_overlong_first_line_is_not_taken_as_a_title(cleaner: Cleaner) -> None:
    result = cleaner.parse("word " * 100 + "\n\nBody.\n")
    assert result.articles == []
    assert len(result.skipped) == 1 and result.skipped[0].startswith("first line is too long")


def test_decode_accepts_utf8_with_and_without_bom() -> None:
    assert decode("Zoë\n".encode()) == "Zoë\n"
    assert decode(b"\xef\xbb\xbfZo\xc3\xab") == "Zoë"


def test_decode_refuses_bytes_that_are_not_utf8_text() -> None:
    with pytest.raises(InputError, match=r"not UTF-8 text \(invalid byte at offset 3\)"):
        decode(b"abc\xff\xfe")
    with pytest.raises(InputError, match="not UTF-8"):
        decode("Zoë".encode("latin-1"))
    with pytest.raises(InputError, match="NUL"):
        decode(b"abc\x00def")


@pytest.mark.parametrize("brk", ["\n", "\r\n", "\r", "\u2028", "\u2029", "\x85", "\x0b", "\x0c"])
def test_clean_line_turns_any_line_break_into_a_space(brk: str) -> None:
    assert clean_line(f"Hello{brk}Bcc: evil@example.com") == "Hello Bcc: evil@example.com"


def test_clean_line_drops_control_characters_and_collapses_spacing() -> None:
    assert clean_line("\ufeff  A\x00B\x1b[31m \u200bC\t\u00a0 D\x7f  ") == "AB[31m C D"


def test_paragraphs_of_a_typed_body_handle_crlf_and_drop_the_footer(cleaner: Cleaner) -> None:
    body = f"One line\r\nwrapped.\r\n\r\nTwo.\r\n\r\n{FOOTER}\r\n"
    assert paragraphs_of(body, cleaner) == ["One line wrapped.", "Two."]


# ---------------------------------------------------------------- de-duplication key


def test_fingerprint_ignores_spacing_case_punctuation_and_line_endings() -> None:
    a = "China’s new K visa sparks backlash.\n\nThe scheme was announced."
    b = "  CHINA’S NEW   K VISA sparks backlash\r\n\r\n\r\nthe scheme was announced!!"
    assert fingerprint(a) == fingerprint(b)


def test_fingerprint_differs_when_the_words_differ() -> None:
    assert fingerprint("The scheme was announced.") != fingerprint("The scheme was cancelled.")


# ---------------------------------------------------------------- a missing footer


def test_a_headline_left_behind_by_a_missing_footer_starts_a_new_article(cleaner: Cleaner) -> None:
    text = (
        "First headline here\n\nIts text.\n\nWhy does it matter?\n\nBecause it does.\n\n"
        "Second headline without footer\n\nIts own text.\n\nMore of it.\n\n" + FOOTER
    )
    result = cleaner.parse(text)
    assert [(a.title, a.paragraphs) for a in result.articles] == [
        ("First headline here", ["Its text.", "Why does it matter?", "Because it does."]),
        ("Second headline without footer", ["Its own text.", "More of it."]),
    ]


def test_seed_004_article_after_the_missing_footer_is_its_own_article(cleaner: Cleaner) -> None:
    articles = {a.title: a for a in cleaner.parse(seed_text("004")).articles}
    h200 = articles["China gives DeepSeek conditional OK for Nvidia H200 chips"]
    assert "Why does it matter?" in h200.paragraphs  # a subheading stays in its article
    assert "orbit" not in h200.body
    orbit = articles["China moves toward data centres in orbit"]
    assert orbit.paragraphs[0].startswith("China is planning to develop large-scale space-based data centres")


# ---------------------------------------------------------------- the scraped page

CHROME = ["Advertisement", "Try Our AI Features", "Explore what Daily8 AI", "No comments yet", "Photo: AFP"]


def test_scraped_page_keeps_the_article_and_drops_the_site_chrome(cleaner: Cleaner) -> None:
    result = cleaner.parse(seed_text("003"))
    main = result.articles[0]
    assert main.title == "How Alibaba is turning into China's AI powerhouse and a school for entrepreneurs"
    assert main.source_note == ""
    assert main.paragraphs[0].startswith("Alibaba Group Holding , left in 2014")
    assert main.paragraphs[-1].startswith("While DeepSeek, the start-up founded by Liang Wenfeng")
    for a in result.articles:
        for chrome in [*CHROME, "Related Articles", "Comments", "hours ago", "a day ago"]:
            assert chrome not in a.body, (a.title, chrome)
    assert result.skipped == []


def test_scraped_fragments_torn_from_a_sentence_are_joined_back(cleaner: Cleaner) -> None:
    main = cleaner.parse(seed_text("003")).articles[0]
    assert any(
        "'six little dragons' that included DeepSeek and Unitree Robotics" in p for p in main.paragraphs
    )
    assert "DeepSeek and" not in main.paragraphs
    assert "Unitree Robotics" not in main.paragraphs


def test_related_article_teasers_become_articles_with_their_source(cleaner: Cleaner) -> None:
    teasers = [a for a in cleaner.parse(seed_text("003")).articles if a.source_note]
    assert [(a.title, a.source_note) for a in teasers] == [
        (
            "From TikTok to Huawei, Chinese tech giants flock to Arab tech hub Dubai",
            "South China Morning Post",
        ),
        (
            "Hongkongers warned of legal liabilities ahead of ChatGPT-style AI tool launch",
            "South China Morning Post",
        ),
        (
            "China's top market regulator summons Alibaba, Meituan, JD.com over delivery price war",
            "South China Morning Post",
        ),
    ]
    assert teasers[0].body.startswith("Chinese tech giants from ByteDance and Huawei Technologies")


def test_teaser_block_of_another_shape_is_skipped_and_reported(cleaner: Cleaner) -> None:
    text = (
        "A page headline\nThe story.\nRelated Articles\n\n"
        "Example Times\n2 hours ago\n- Example Times\nA proper teaser headline\nIts text.\n\n"
        "Just some stray words\n\n"
        "Other Paper\n3 hours ago\nA teaser without its source line\nIts text.\n"
    )
    result = cleaner.parse(text)
    assert [(a.title, a.source_note) for a in result.articles] == [
        ("A page headline", ""),
        ("A proper teaser headline", "Example Times"),
    ]
    assert result.skipped == [
        "unrecognised related-article block: 'Just some stray words'",
        "unrecognised related-article block: 'Other Paper'",
    ]


def test_teasers_are_skipped_with_a_reason_when_import_related_is_off(articles_cfg: ArticlesConfig) -> None:
    result = Cleaner(articles_cfg.model_copy(update={"import_related": False})).parse(seed_text("003"))
    assert [a.title for a in result.articles] == [
        "How Alibaba is turning into China's AI powerhouse and a school for entrepreneurs"
    ]
    assert result.skipped == ["related-article teasers (import_related is off)"]


def test_photo_credits_glued_into_scraped_text_are_removed():
    cleaner = Cleaner(load_config(str(ROOT / "config.toml")).articles)
    text = "Title here\n\nTech giants like ByteDance and Microsoft. Photo: Handout Having reduced oil.\n"
    [article] = cleaner.parse(text).articles
    assert article.paragraphs == ["Tech giants like ByteDance and Microsoft. Having reduced oil."]
