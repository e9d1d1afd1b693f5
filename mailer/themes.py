"""Theme assignment: a transparent, deterministic keyword score.

Each keyword (a whole word or phrase, case-insensitive) scores 3 per occurrence in the
title, and 1 if it occurs in the body at all (so a long body that repeats "AI" twenty
times does not drown out what the article is about). The highest total wins; ties go to the theme
listed first; no match at all goes to the fallback theme.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailer.settings import ThemeConfig

TITLE_WEIGHT = 3
BODY_WEIGHT = 1


@dataclass(frozen=True)
class Theme:
    slug: str
    name: str
    fallback: bool
    pattern: re.Pattern[str] | None


class Themes:
    def __init__(self, configs: list[ThemeConfig]) -> None:
        self.all = [Theme(c.slug, c.name, c.fallback, _keyword_pattern(c.keywords)) for c in configs]
        self.by_slug = {t.slug: t for t in self.all}
        self.fallback = next(t for t in self.all if t.fallback)

    def order(self, slug: str) -> int:
        return next((i for i, t in enumerate(self.all) if t.slug == slug), len(self.all))

    def name(self, slug: str) -> str:
        theme = self.by_slug.get(slug)
        return theme.name if theme else self.fallback.name

    def scores(self, title: str, body: str) -> dict[str, int]:
        out = {}
        for theme in self.all:
            if theme.pattern is None:
                continue
            # One point per distinct keyword: "Rare  earth" and "rare earth" are one keyword.
            in_body = {" ".join(m.casefold().split()) for m in theme.pattern.findall(body)}
            score = TITLE_WEIGHT * len(theme.pattern.findall(title)) + BODY_WEIGHT * len(in_body)
            if score:
                out[theme.slug] = score
        return out

    def classify(self, title: str, body: str) -> str:
        scores = self.scores(title, body)
        if not scores:
            return self.fallback.slug
        best = max(scores.values())
        return next(t.slug for t in self.all if scores.get(t.slug) == best)


def _keyword_pattern(keywords: list[str]) -> re.Pattern[str] | None:
    words = sorted({k.strip() for k in keywords if k.strip()}, key=len, reverse=True)
    if not words:
        return None
    alternatives = "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in words)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
