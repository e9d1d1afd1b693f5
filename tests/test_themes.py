"""Themes: the keyword rule on small hand-made theme lists, and where the seed articles land."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from mailer.articles import ArticleStore
from mailer.models import Article
from mailer.settings import ThemeConfig
from mailer.themes import Themes
from tests.conftest import SEEDS


def themes(*specs: tuple[str, list[str]], fallback: str = "other") -> Themes:
    configs = [ThemeConfig(slug=slug, name=slug.title(), keywords=kw) for slug, kw in specs]
    return Themes([*configs, ThemeConfig(slug=fallback, name="More", fallback=True)])


AB = themes(("alpha", ["apple", "avocado"]), ("beta", ["banana", "blueberry"]))

# ---------------------------------------------------------------- the rule


def test_each_keyword_occurrence_in_the_title_counts_three() -> None:
    assert AB.scores("apple", "") == {"alpha": 3}
    assert AB.scores("apple and apple and avocado", "") == {"alpha": 9}


def test_a_keyword_in_the_body_counts_one_however_often_it_occurs() -> None:
    assert AB.scores("", "banana") == {"beta": 1}
    assert AB.scores("", "banana " * 20) == {"beta": 1}
    assert AB.scores("", "banana, blueberry and BANANA") == {"beta": 2}  # two distinct keywords


def test_title_and_body_scores_add_up() -> None:
    assert AB.scores("apple news", "apple and avocado and banana") == {"alpha": 5, "beta": 1}


def test_the_highest_score_wins() -> None:
    assert AB.classify("banana", "apple and avocado") == "beta"  # 3 beats 2
    assert AB.classify("banana", "apple, avocado, plus more apple") == "beta"
    assert AB.classify("apple", "banana and blueberry") == "alpha"


def test_a_tie_goes_to_the_theme_listed_first() -> None:
    assert AB.scores("apple banana", "") == {"alpha": 3, "beta": 3}
    assert AB.classify("apple banana", "") == "alpha"
    ba = themes(("beta", ["banana"]), ("alpha", ["apple"]))
    assert ba.classify("apple banana", "") == "beta"


def test_no_keyword_at_all_goes_to_the_fallback_theme() -> None:
    assert AB.scores("cherries", "and plums") == {}
    assert AB.classify("cherries", "and plums") == "other"


def test_the_fallback_theme_need_not_be_listed_last() -> None:
    t = Themes(
        [
            ThemeConfig(slug="misc", name="Misc", fallback=True),
            ThemeConfig(slug="alpha", name="Alpha", keywords=["apple"]),
        ]
    )
    assert t.classify("plums", "") == "misc"
    assert t.classify("apple", "") == "alpha"


def test_keywords_match_whole_words_only_and_ignore_case() -> None:
    t = themes(("ai", ["AI"]), ("chips", ["chip"]))
    assert t.scores("Said the chipset maker in Dubai", "AIDS research") == {}
    assert t.scores("ai and Ai", "the chip.") == {"ai": 6, "chips": 1}
    assert t.classify("Z.ai launches a model", "") == "ai"


def test_phrases_match_across_any_spacing() -> None:
    t = themes(("earth", ["rare earth"]))
    assert t.scores("Rare\u00a0 earth exports", "") == {"earth": 3}
    assert t.scores("", "rare\nearth") == {"earth": 1}


def test_a_phrase_in_the_body_counts_once_whatever_its_spacing_and_case() -> None:
    t = themes(("earth", ["rare earth"]))
    assert t.scores("", "Rare earth, rare  earth and RARE\nEARTH") == {"earth": 1}


def test_overlapping_keywords_of_different_themes_each_score() -> None:
    t = themes(("earth", ["rare earth"]), ("rare", ["rare"]))
    assert t.scores("rare earth", "") == {"earth": 3, "rare": 3}
    assert t.classify("rare earth", "") == "earth"


def test_a_theme_without_keywords_never_scores() -> None:
    t = themes(("empty", []), ("alpha", ["apple"]))
    assert t.scores("apple empty", "") == {"alpha": 3}


def test_theme_order_and_names_follow_the_list() -> None:
    assert [AB.order(s) for s in ("alpha", "beta", "other", "unknown")] == [0, 1, 2, 3]
    assert AB.name("beta") == "Beta"
    assert AB.name("gone") == "More"  # an article with a removed theme shows under the fallback


# ---------------------------------------------------------------- the seeds

EXPECTED = {
    # The examples from the issue.
    "China’s Silk Typhoon hackers filed patents for advanced spyware tools": "cyber",
    "China demands Nvidia explain security flaws in H20 chips": "chips",
    "UBTech’s Walker S2 marks a leap towards uninterrupted robotic work": "robotics",
    "Alibaba shares climb to highest since 2021": "business",
    "Chinese court limits liability for AI hallucinations": "policy",
    "Z.ai unveils cheaper, advanced AI model GLM-4.5": "ai",
    # More that an editor would file the same way.
    "Major Chinese data leak exposes billions of records": "cyber",
    "New cyber rules tighten grip on China’s critical infrastructure": "cyber",
    "China’s Unitree reveals next-generation humanoid ahead of major IPO": "robotics",
    "Huawei challenges Nvidia with AI super server": "chips",
    "Netherlands and China in talks to resolve Nexperia dispute": "chips",
    "China’s AI battle heats up with Moonshot AI’s Kimi 2.5 upgrade": "ai",
    "DeepSeek and others gain traction in US and EU": "ai",
    "China issues action plan for global AI governance and proposes global AI cooperation "
    "organisation": "policy",
    "China cracks down on Kuaishou and Weibo over alleged online content violations": "policy",
    "TikTok restructures operations for US market": "business",
    "From TikTok to Huawei, Chinese tech giants flock to Arab tech hub Dubai": "business",
    "China moves toward data centres in orbit": "chips",
}


@pytest.fixture
def seeded(db, cfg) -> dict[str, Article]:
    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    with db.session() as s:
        return {a.title: a for a in s.scalars(select(Article))}


@pytest.mark.parametrize("title", list(EXPECTED))
def test_seed_article_lands_in_the_section_an_editor_would_choose(seeded, title) -> None:
    assert seeded[title].theme == EXPECTED[title]


def test_every_seed_article_gets_a_configured_theme_and_all_sections_are_used(seeded, cfg) -> None:
    used = {a.theme for a in seeded.values()}
    assert used <= set(cfg.theme_slugs)
    assert used >= {"ai", "chips", "cyber", "robotics", "policy", "business"}


def test_stored_theme_is_what_the_rule_gives_for_the_stored_text(seeded, cfg) -> None:
    rule = Themes(cfg.themes)
    assert {t: a.theme for t, a in seeded.items()} == {
        t: rule.classify(a.title, a.body) for t, a in seeded.items()
    }
