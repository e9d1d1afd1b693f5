"""Articles end to end: `mailer articles import/add/list/set-theme/remove` on a real SQLite file."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from mailer.articles import ArticleStore
from mailer.cli import cli
from mailer.config import Config, load_config
from mailer.db import Database
from mailer.models import Article, Digest, utcnow
from mailer.parsing import squash
from tests.conftest import ROOT, SEEDS, write_config

FOOTER = "Would you like to learn more about AI, tech and digital diplomacy? If so, ask our Diplo chatbot!"
CHROME = [
    "Advertisement",
    "Try Our AI Features",
    "Explore what Daily8 AI can do for you",
    "Comments",
    "No comments yet",
    "Related Articles",
]
SCMP = "South China Morning Post"
SEED_NAMES = sorted(p.name for p in SEEDS.glob("*.txt"))
DUPLICATED_IN_001 = [
    "Alibaba’s Qwen lab launches robotics unit to drive embodied AI",
    "Study shows how AI can uncover hidden biological mechanisms",
    "New cyber rules tighten grip on China’s critical infrastructure",
    "Alibaba shares climb to highest since 2021",
]


def stored(db: Database) -> list[Article]:
    with db.session() as s:
        return list(s.scalars(select(Article).order_by(Article.id)))


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def export(*titles: str, footer: str = FOOTER) -> str:
    return "".join(
        f"{t}\n\nThe text of {t}.\n\nA second paragraph about {t}.\n\n{footer}\n\n" for t in titles
    )


def one_line_error(result: Result) -> str:
    """The run failed the documented way: exit 1, one line on stderr, no traceback."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def add_to_digest(db: Database, article_id: int) -> int:
    with db.session() as s:
        d = Digest(slot_key=f"manual:test-{article_id}", slot_at=utcnow(), status="sending")
        s.add(d)
        s.flush()
        s.get(Article, article_id).digest_id = d.id
        return d.id


@pytest.fixture
def store(db: Database, cfg: Config) -> ArticleStore:
    return ArticleStore(db, cfg)


# ---------------------------------------------------------------- importing the seeds


def test_import_reports_per_file_added_and_duplicates_as_json(run_cli, db) -> None:
    result = run_cli("articles", "import", str(SEEDS), "--json")
    assert result.exit_code == 0, result.output
    report = {Path(r["path"]).name: r for r in json.loads(result.stdout)}
    assert list(report) == SEED_NAMES
    assert {name[:3]: (r["added"], r["duplicates"]) for name, r in report.items()} == {
        "000": (10, 0),
        "001": (6, 4),
        "002": (10, 0),
        "003": (4, 0),
        "004": (10, 0),
    }
    assert all(r["skipped"] == [] and r["error"] == "" for r in report.values())
    assert len(stored(db)) == 40


def test_import_prints_a_line_per_file_with_added_and_duplicates(run_cli, tmp_path) -> None:
    result = run_cli("articles", "import", str(SEEDS / SEED_NAMES[0]), str(SEEDS / SEED_NAMES[1]))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{SEEDS / SEED_NAMES[0]}: 10 added, 0 duplicate(s)",
        f"{SEEDS / SEED_NAMES[1]}: 6 added, 4 duplicate(s)",
        "total: 16 added from 2 file(s)",
    ]
    assert result.stderr == ""


def test_no_footer_spelling_survives_in_any_stored_title_or_body(store, db) -> None:
    store.import_paths([str(SEEDS)])
    articles = stored(db)
    assert len(articles) == 40
    for a in articles:
        for text in (a.title, *a.paragraphs):
            assert "diplochatbot" not in squash(text), a.title
            assert "wouldyouliketolearnmore" not in squash(text), a.title
            assert not store.cleaner.is_boilerplate(text), a.title


def test_typo_footer_in_a_new_file_is_caught_by_the_fuzzy_match(store, db, tmp_path) -> None:
    typo = "Would you like to lern more about AI, tech and digital diplomacy? If so, ask our Diplo chatbt"
    (report,) = store.import_paths(
        [str(write(tmp_path / "typo.txt", export("Typo one", "Typo two", footer=typo)))]
    )
    assert report.added == 2
    assert [a.title for a in stored(db)] == ["Typo one", "Typo two"]
    assert all("chatbt" not in a.body for a in stored(db))


def test_footer_of_a_new_source_in_config_is_removed_without_code(tmp_path, database_url) -> None:
    footer = "Liked this story? Forward it to a colleague and follow The Example Wire!"
    folder = tmp_path / "other"
    folder.mkdir()
    config = write_config(folder, database_url=database_url)
    # Added to the list in the file as an editor would (the boilerplate list spans lines).
    text = config.read_text(encoding="utf-8")
    assert text.count(f'    "{FOOTER}",\n') == 1
    config.write_text(
        text.replace(f'    "{FOOTER}",\n', f'    "{FOOTER}",\n    "{footer}",\n'), encoding="utf-8"
    )
    text = export(
        "Wire story one",
        "Wire story two",
        footer="Liked this story?Forward it to a colleague and follow The Example Wire",
    )
    file = write(tmp_path / "wire.txt", text)
    result = CliRunner().invoke(cli, ["--config", str(config), "articles", "import", "--json", str(file)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["added"] == 2
    cfg = load_config(str(config))
    db = Database(cfg.database_url)
    try:
        articles = stored(db)
    finally:
        db.dispose()
    assert [a.title for a in articles] == ["Wire story one", "Wire story two"]
    assert all("Example Wire" not in a.body for a in articles)


def test_scraped_page_keeps_the_article_and_no_chrome_reaches_a_stored_body(store, db) -> None:
    (report,) = store.import_paths([str(next(SEEDS.glob("003_*.txt")))])
    assert (report.added, report.skipped, report.error) == (4, [], "")
    articles = stored(db)
    main = articles[0]
    assert main.title == "How Alibaba is turning into China's AI powerhouse and a school for entrepreneurs"
    assert main.source.startswith("003_")
    assert "Rokid has emerged as one of the most prominent technology start-ups" in main.body
    for a in articles:
        for chrome in CHROME:
            assert chrome not in a.body, (a.title, chrome)
        assert "hours ago" not in a.body and "a day ago" not in a.body


def test_no_stored_seed_paragraph_is_a_chrome_line(store, db) -> None:
    store.import_paths([str(SEEDS)])
    for a in stored(db):
        assert not any(store.cleaner.is_chrome(p) or store.cleaner.is_related_marker(p) for p in a.paragraphs)
        for chrome in ("Advertisement", "Try Our AI Features", "No comments yet", "Related Articles"):
            assert chrome not in a.body


def test_related_article_teasers_are_stored_as_articles_from_scmp(store, db) -> None:
    store.import_paths([str(SEEDS)])
    teasers = {a.title: a for a in stored(db) if a.source == SCMP}
    assert sorted(teasers) == [
        "China's top market regulator summons Alibaba, Meituan, JD.com over delivery price war",
        "From TikTok to Huawei, Chinese tech giants flock to Arab tech hub Dubai",
        "Hongkongers warned of legal liabilities ahead of ChatGPT-style AI tool launch",
    ]
    assert teasers["From TikTok to Huawei, Chinese tech giants flock to Arab tech hub Dubai"].body.startswith(
        "Chinese tech giants from ByteDance and Huawei Technologies"
    )


def test_article_after_a_missing_footer_is_stored_on_its_own(store, db) -> None:
    store.import_paths([str(next(SEEDS.glob("004_*.txt")))])
    by_title = {a.title: a for a in stored(db)}
    assert "orbit" not in by_title["China gives DeepSeek conditional OK for Nvidia H200 chips"].body
    assert by_title["China moves toward data centres in orbit"].body.startswith("China is planning")


# ---------------------------------------------------------------- de-duplication


def test_articles_repeated_in_another_export_are_stored_once(store, db) -> None:
    store.import_paths([str(SEEDS)])
    counts = Counter(a.title for a in stored(db))
    assert [counts[t] for t in DUPLICATED_IN_001] == [1, 1, 1, 1]
    assert max(counts.values()) == 1
    assert {a.source for a in stored(db) if a.title in DUPLICATED_IN_001} == {SEED_NAMES[0]}


def test_importing_the_same_files_again_adds_nothing(run_cli, db) -> None:
    assert run_cli("articles", "import", str(SEEDS)).exit_code == 0
    before = [(a.id, a.title, a.body) for a in stored(db)]
    again = run_cli("articles", "import", str(SEEDS), "--json")
    assert again.exit_code == 0, again.output
    reports = json.loads(again.stdout)
    assert [r["added"] for r in reports] == [0, 0, 0, 0, 0]
    assert sum(r["duplicates"] for r in reports) == 44  # every parsed article, 001 included
    assert [(a.id, a.title, a.body) for a in stored(db)] == before


def test_same_text_with_other_spacing_case_and_crlf_in_another_file_is_a_duplicate(
    store, db, tmp_path
) -> None:
    text = "Some headline\n\nThe first paragraph, with words.\n\nThe second one.\n"
    messy = "SOME   HEADLINE\r\n\r\n  the FIRST paragraph,  with\r\nwords.  \r\n\r\n\r\nthe second one\r\n"
    first = store.import_paths([str(write(tmp_path / "a.txt", text))])[0]
    second = store.import_paths([str(write(tmp_path / "completely-different-name.txt", messy))])[0]
    assert (first.added, second.added, second.duplicates) == (1, 0, 1)
    assert len(stored(db)) == 1


def test_same_file_name_with_different_text_is_not_a_duplicate(store, db, tmp_path) -> None:
    store.import_paths([str(write(tmp_path / "x" / "news.txt", export("Story from x")))])
    (report,) = store.import_paths([str(write(tmp_path / "y" / "news.txt", export("Story from y")))])
    assert (report.added, report.duplicates) == (1, 0)
    assert [a.title for a in stored(db)] == ["Story from x", "Story from y"]


# ---------------------------------------------------------------- robust input


def test_crlf_bom_and_trailing_spaces_import_clean(store, db, tmp_path) -> None:
    text = "\ufeff" + export("Messy headline").replace("\n", "   \r\n")
    (report,) = store.import_paths([str(write(tmp_path / "messy.txt", text.encode("utf-8")))])
    assert report.added == 1
    (a,) = stored(db)
    assert a.title == "Messy headline"
    assert a.paragraphs == ["The text of Messy headline.", "A second paragraph about Messy headline."]
    assert "\r" not in a.body and "\ufeff" not in a.title + a.body and "  " not in a.body


def test_file_without_a_footer_is_one_article(store, db, tmp_path) -> None:
    text = "Only headline\n\nFirst paragraph.\n\nSecond paragraph.\n"
    (report,) = store.import_paths([str(write(tmp_path / "plain.txt", text))])
    assert (report.added, report.skipped) == (1, [])
    assert [(a.title, a.paragraphs) for a in stored(db)] == [
        ("Only headline", ["First paragraph.", "Second paragraph."])
    ]


def test_empty_file_is_skipped_and_the_report_says_so(run_cli, db, tmp_path) -> None:
    empty = write(tmp_path / "empty.txt", "")
    blank = write(tmp_path / "blank.txt", " \r\n\t\n")
    result = run_cli("articles", "import", str(empty), str(blank))
    assert result.exit_code == 0, result.output
    assert f"{empty}: 0 added, 0 duplicate(s)\n  skipped: empty file\n" in result.stdout
    assert f"{blank}: 0 added, 0 duplicate(s)\n  skipped: empty file\n" in result.stdout
    as_json = run_cli("articles", "import", "--json", str(empty))
    assert json.loads(as_json.stdout) == [
        {"path": str(empty), "added": 0, "duplicates": 0, "skipped": ["empty file"], "error": ""}
    ]
    assert stored(db) == []


def test_skipped_parts_of_a_file_are_listed_with_their_reason(run_cli, tmp_path) -> None:
    file = write(tmp_path / "partly.txt", f"Headline alone\n\n{FOOTER}\n\n" + export("Real story"))
    result = run_cli("articles", "import", str(file))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:2] == [
        f"{file}: 1 added, 0 duplicate(s)",
        "  skipped: title without a body: 'Headline alone'",
    ]


def test_non_utf8_file_is_one_error_line_exit_1_and_the_other_files_still_import(
    run_cli, db, tmp_path
) -> None:
    good1 = write(tmp_path / "a_good.txt", export("Good story one"))
    bad = write(tmp_path / "b_bad.txt", "Caf\xe9 headline\n\nLatin-1 text.\n".encode("latin-1"))
    good2 = write(tmp_path / "c_good.txt", export("Good story two"))
    result = run_cli("articles", "import", str(good1), str(bad), str(good2))
    line = one_line_error(result)
    assert line == f"{bad}: error: not UTF-8 text (invalid byte at offset 3)"
    assert f"{good2}: 1 added" in result.stdout
    assert [a.title for a in stored(db)] == ["Good story one", "Good story two"]


def test_non_utf8_file_in_json_mode_is_in_the_report_and_on_stderr_with_exit_1(run_cli, db, tmp_path) -> None:
    bad = write(tmp_path / "bad.txt", b"\xff\xfeH\x00i\x00")
    good = write(tmp_path / "good.txt", export("Good story"))
    result = run_cli("articles", "import", "--json", str(tmp_path))
    line = one_line_error(result)
    assert str(bad) in line and "not UTF-8" in line
    reports = {Path(r["path"]).name: r for r in json.loads(result.stdout)}
    assert reports["bad.txt"]["error"].startswith("not UTF-8 text")
    assert reports["good.txt"]["added"] == 1
    assert [a.source for a in stored(db)] == [good.name]


def test_subprocess_import_of_a_non_utf8_file_exits_1_with_one_line_naming_it(config_path, tmp_path) -> None:
    bad = write(tmp_path / "binary.txt", bytes(range(128, 256)))
    proc = subprocess.run(
        [sys.executable, "-m", "mailer", "--config", str(config_path), "articles", "import", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and str(bad) in lines[0], proc.stderr


def test_a_path_that_does_not_exist_is_a_one_line_error(run_cli, tmp_path) -> None:
    line = one_line_error(run_cli("articles", "import", str(tmp_path / "nope.txt")))
    assert line == f"error: {tmp_path / 'nope.txt'}: no such file or folder"


def test_a_folder_imports_its_txt_files_recursively_and_ignores_other_files(store, db, tmp_path) -> None:
    write(tmp_path / "in" / "a.txt", export("Top level story"))
    write(tmp_path / "in" / "sub" / "b.txt", export("Nested story"))
    write(tmp_path / "in" / "notes.md", export("Markdown story"))
    reports = store.import_paths([str(tmp_path / "in")])
    assert [Path(r.path).name for r in reports] == ["a.txt", "b.txt"]
    assert sorted(a.title for a in stored(db)) == ["Nested story", "Top level story"]


def test_import_is_atomic_per_file(store, db, tmp_path, monkeypatch) -> None:
    # A crash half-way through one file's insert cannot be produced with real parts, so
    # insert is made to fail on the 2nd article of the first file.
    first = write(tmp_path / "a.txt", export("A one", "A two", "A three"))
    second = write(tmp_path / "b.txt", export("B one"))
    real_insert = ArticleStore.insert
    calls = []

    def failing_insert(self, s, item, *args, **kwargs):
        calls.append(item.title)
        if len(calls) == 2:
            raise OperationalError("INSERT INTO articles", {}, Exception("disk I/O error"))
        return real_insert(self, s, item, *args, **kwargs)

    monkeypatch.setattr(ArticleStore, "insert", failing_insert)
    reports = store.import_paths([str(first), str(second)])
    assert calls[:2] == ["A one", "A two"]
    assert reports[0].added == 0 and "disk I/O error" in reports[0].error
    assert reports[1].added == 1 and reports[1].error == ""
    assert [a.title for a in stored(db)] == ["B one"]


def test_a_database_failure_mid_file_is_one_error_line_and_exit_1(run_cli, db, tmp_path, monkeypatch) -> None:
    file = write(tmp_path / "a.txt", export("A one", "A two"))
    real_insert = ArticleStore.insert
    calls = []

    def failing_insert(self, s, item, *args, **kwargs):
        calls.append(item.title)
        if len(calls) == 2:
            raise OperationalError("INSERT INTO articles", {}, Exception("database is locked"))
        return real_insert(self, s, item, *args, **kwargs)

    monkeypatch.setattr(ArticleStore, "insert", failing_insert)
    line = one_line_error(run_cli("articles", "import", str(file)))
    assert line.startswith(f"{file}: error: database: database is locked")
    assert stored(db) == []


# ---------------------------------------------------------------- articles add


def test_add_stores_the_article_with_paragraphs_and_keyword_theme(run_cli, db) -> None:
    result = run_cli(
        "articles", "add", "--title", "Nvidia ships new chips", "--body", "First part.\n\nSecond part.",
        "--url", "https://example.org/a?b=1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (a,) = stored(db)
    assert result.stdout == f"added article #{a.id} [chips] Nvidia ships new chips\n"
    assert (a.title, a.paragraphs, a.url, a.source, a.theme) == (
        "Nvidia ships new chips",
        ["First part.", "Second part."],
        "https://example.org/a?b=1",
        "cli",
        "chips",
    )


def test_add_reads_the_body_from_a_file(run_cli, db, tmp_path) -> None:
    body = write(
        tmp_path / "body.txt", "\ufeffLine one\r\nwrapped.\r\n\r\nLine two.\r\n\r\n" + FOOTER + "\r\n"
    )
    result = run_cli("articles", "add", "--title", "From a file", "--body-file", str(body))
    assert result.exit_code == 0, result.output
    assert [a.paragraphs for a in stored(db)] == [["Line one wrapped.", "Line two."]]


def test_add_body_file_that_is_not_utf8_is_a_one_line_error(run_cli, db, tmp_path) -> None:
    body = write(tmp_path / "body.txt", b"\xff\xff")
    line = one_line_error(run_cli("articles", "add", "--title", "T", "--body-file", str(body)))
    assert line == f"error: {body}: not UTF-8 text (invalid byte at offset 0)"
    assert stored(db) == []


@pytest.mark.parametrize("args", [[], ["--body", "x", "--body-file", "x.txt"]])
def test_add_needs_exactly_one_of_body_and_body_file(run_cli, args) -> None:
    line = one_line_error(run_cli("articles", "add", "--title", "T", *args))
    assert line == "error: give exactly one of --body or --body-file"


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JavaScript://example.org/%0Aalert(1)",
        "data:text/html;base64,PHNjcmlwdD4=",
        "ftp://example.org/file",
        "http://",
        "//example.org/path",
        "example.org",
        "https://exa mple.org/",
        "https://example.org/\x00",
    ],
)
def test_add_refuses_urls_that_are_not_http_or_https(run_cli, db, url) -> None:
    line = one_line_error(run_cli("articles", "add", "--title", "T", "--body", "B.", "--url", url))
    assert line.startswith("error: --url ") and "only absolute http:// or https:// URLs" in line
    assert stored(db) == []


@pytest.mark.parametrize(
    "url", ["http://example.org", "https://example.org/path?q=1#frag", "HTTPS://Example.org/"]
)
def test_add_accepts_http_and_https_urls(store, url) -> None:
    assert store.add("T", "B.", url=url).url == url


def test_add_refuses_an_unknown_theme(run_cli, db) -> None:
    line = one_line_error(run_cli("articles", "add", "--title", "T", "--body", "B.", "--theme", "sports"))
    assert line.startswith("error: unknown theme 'sports' (themes: ai, chips, cyber")
    assert stored(db) == []


def test_add_with_a_theme_overrides_the_keywords(store) -> None:
    assert store.add("Nvidia chips everywhere", "Chips.", theme="policy").theme == "policy"


@pytest.mark.parametrize(
    "title",
    [
        "Headline\r\nBcc: victim@example.com",
        "Headline\nBcc: victim@example.com",
        "Headline\rBcc: victim@example.com",
        "Headline\u2028Bcc: victim@example.com",
        "Headline\x85Bcc: victim@example.com",
        "Headline\x00\x1b\x7f Bcc: victim@example.com",
    ],
)
def test_line_breaks_and_control_characters_never_survive_in_a_title(run_cli, db, title) -> None:
    result = run_cli("articles", "add", "--title", title, "--body", "Body.")
    assert result.exit_code == 0, result.output
    (a,) = stored(db)
    assert a.title == "Headline Bcc: victim@example.com"
    assert all(ch.isprintable() for ch in a.title)


def test_add_refuses_an_empty_title_or_body(run_cli, db) -> None:
    assert one_line_error(run_cli("articles", "add", "--title", " \r\n ", "--body", "B.")) == (
        "error: --title is empty"
    )
    assert one_line_error(run_cli("articles", "add", "--title", "T", "--body", " \n\n ")) == (
        "error: the article body is empty"
    )
    assert stored(db) == []


def test_add_refuses_an_overlong_title(run_cli, db) -> None:
    line = one_line_error(run_cli("articles", "add", "--title", "x" * 301, "--body", "B."))
    assert line == "error: --title is longer than 300 characters"
    assert stored(db) == []


def test_add_refuses_a_duplicate_of_a_stored_article(run_cli, store) -> None:
    first = store.add("Original", "The same words.")
    line = one_line_error(run_cli("articles", "add", "--title", "Copy", "--body", "the SAME words"))
    assert line == f"error: duplicate: the same text is already article #{first.id}"


# ---------------------------------------------------------------- list, set-theme, remove


def test_list_json_shows_every_article_in_theme_order(run_cli, store) -> None:
    store.import_paths([str(SEEDS)])
    result = run_cli("articles", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 40
    order = store.cfg.theme_slugs
    assert [order.index(r["theme"]) for r in rows] == sorted(order.index(r["theme"]) for r in rows)
    silk = next(r for r in rows if r["title"].startswith("China’s Silk Typhoon"))
    assert (silk["theme"], silk["digest_id"], silk["source"]) == ("cyber", None, "002_242ab57f9793d5a3.txt")


def test_list_filters_by_theme(run_cli, store) -> None:
    store.import_paths([str(SEEDS)])
    rows = json.loads(run_cli("articles", "list", "--theme", "robotics", "--json").stdout)
    assert rows and {r["theme"] for r in rows} == {"robotics"}
    assert "UBTech’s Walker S2 marks a leap towards uninterrupted robotic work" in [r["title"] for r in rows]


def test_list_refuses_an_unknown_theme(run_cli) -> None:
    assert one_line_error(run_cli("articles", "list", "--theme", "nope")).startswith(
        "error: unknown theme 'nope'"
    )


def test_list_unsent_leaves_out_articles_already_in_a_digest(run_cli, store, db) -> None:
    kept = store.add("Still unsent", "One.")
    taken = store.add("In a digest", "Two.")
    add_to_digest(db, taken.id)
    all_ids = [r["id"] for r in json.loads(run_cli("articles", "list", "--json").stdout)]
    unsent_ids = [r["id"] for r in json.loads(run_cli("articles", "list", "--unsent", "--json").stdout)]
    assert sorted(all_ids) == [kept.id, taken.id]
    assert unsent_ids == [kept.id]


def test_list_table_shows_the_state_and_a_count(run_cli, store, db) -> None:
    store.add("Still unsent", "One.")
    digest_id = add_to_digest(db, store.add("In a digest", "Two.").id)
    result = run_cli("articles", "list")
    assert result.exit_code == 0, result.output
    assert "Still unsent" in result.stdout and "unsent" in result.stdout
    assert f"digest #{digest_id}" in result.stdout
    assert result.stdout.rstrip().endswith("2 article(s)")


def test_set_theme_moves_an_article(run_cli, store, db) -> None:
    a = store.add("Nvidia chips", "Chips.")
    result = run_cli("articles", "set-theme", str(a.id), "business")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"article #{a.id} is now in theme business\n"
    assert [x.theme for x in stored(db)] == ["business"]


def test_set_theme_refuses_an_unknown_theme_or_article(run_cli, store, db) -> None:
    a = store.add("Nvidia chips", "Chips.")
    assert one_line_error(run_cli("articles", "set-theme", str(a.id), "nope")).startswith(
        "error: unknown theme"
    )
    assert (
        one_line_error(run_cli("articles", "set-theme", "999", "ai")) == "error: article #999 does not exist"
    )
    assert [x.theme for x in stored(db)] == ["chips"]


def test_remove_deletes_an_unsent_article(run_cli, store, db) -> None:
    a = store.add("Going away", "Bye.")
    b = store.add("Staying", "Hi.")
    result = run_cli("articles", "remove", str(a.id))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"removed article #{a.id} Going away\n"
    assert [x.id for x in stored(db)] == [b.id]


def test_remove_refuses_an_article_already_in_a_digest(run_cli, store, db) -> None:
    a = store.add("Reserved", "For the digest.")
    digest_id = add_to_digest(db, a.id)
    line = one_line_error(run_cli("articles", "remove", str(a.id)))
    assert line == f"error: article #{a.id} is in digest #{digest_id}; only unsent ones can be removed"
    assert [x.id for x in stored(db)] == [a.id]


def test_remove_of_a_missing_article_is_a_one_line_error(run_cli) -> None:
    assert one_line_error(run_cli("articles", "remove", "42")) == "error: article #42 does not exist"
