"""Configuration: config.toml, where it is found, MAILER_* overrides, the one-line refusals
for a bad config (in-process and through the real CLI), cron day numbers, and secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailer.cli import cli
from mailer.config import load_config
from mailer.errors import ConfigError
from mailer.scheduler import Schedule
from tests.conftest import ROOT, write_config

SECRET = "pw-Zq9-very-secret-4711"


def _toml(folder: Path, body: str, name: str = "config.toml") -> Path:
    """A config file of just `body`: everything else keeps its default."""
    path = folder / name
    path.write_text(body, encoding="utf-8")
    return path


def _refusal(path: Path | str | None) -> str:
    """The ConfigError message for loading `path`, checked to be one line."""
    with pytest.raises(ConfigError) as info:
        load_config(None if path is None else str(path))
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    return message


# ---------------------------------------------------------------- loading and overrides


def test_the_repository_config_toml_loads() -> None:
    cfg = load_config(str(ROOT / "config.toml"))

    assert cfg.path == ROOT / "config.toml"
    assert cfg.digest.name == "Tech Policy Weekly"
    assert cfg.schedule.cron == "0 8 * * mon"
    assert cfg.schedule.timezone == "Europe/Berlin"
    assert cfg.smtp.port == 2525
    assert cfg.catcher.enabled is True
    assert cfg.theme_slugs == ["ai", "chips", "cyber", "robotics", "policy", "business", "other"]
    assert cfg.fallback_theme == "other"
    # Relative paths are relative to the config file, not to the working directory.
    assert cfg.database_url == f"sqlite:///{ROOT / 'var' / 'mailer.db'}"


def test_environment_variables_override_the_file_with_the_right_types(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path, catcher={"enabled": True})
    monkeypatch.setenv("MAILER_SMTP_PORT", "2526")
    monkeypatch.setenv("MAILER_DATABASE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    monkeypatch.setenv("MAILER_SMTP_FROM_ADDRESS", "news@example.com")
    monkeypatch.setenv("MAILER_CATCHER_ENABLED", "false")

    cfg = load_config(str(path))

    assert cfg.smtp.port == 2526 and type(cfg.smtp.port) is int
    assert cfg.database_url == f"sqlite:///{tmp_path / 'other.db'}"
    assert cfg.smtp.from_address == "news@example.com"
    assert cfg.catcher.enabled is False
    # Keys not overridden still come from the file.
    assert cfg.smtp.from_name == "Tech Policy Weekly"


def test_mailer_config_is_used_when_no_config_option_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = _toml(tmp_path, '[schedule]\ncron = "30 6 * * 2"\ntimezone = "Asia/Tokyo"\n', "chosen.toml")
    other = tmp_path / "cwd"
    other.mkdir()
    _toml(other, '[schedule]\ncron = "0 9 * * 5"\n')
    monkeypatch.chdir(other)
    monkeypatch.setenv("MAILER_CONFIG", str(chosen))

    cfg = load_config(None)
    result = CliRunner().invoke(cli, ["schedule", "--count", "1"])

    assert cfg.path == chosen and cfg.schedule.cron == "30 6 * * 2"
    assert result.exit_code == 0, result.output
    assert "30 6 * * 2 (Asia/Tokyo)" in result.stdout


def test_the_config_option_wins_over_mailer_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_env = _toml(tmp_path, '[schedule]\ncron = "30 6 * * 2"\n', "env.toml")
    explicit = _toml(tmp_path, '[schedule]\ncron = "0 7 * * 3"\n', "explicit.toml")
    monkeypatch.setenv("MAILER_CONFIG", str(from_env))

    assert load_config(str(explicit)).schedule.cron == "0 7 * * 3"


def test_config_toml_in_the_working_directory_is_used_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _toml(tmp_path, '[schedule]\ncron = "0 9 * * 5"\n[database]\nurl = "sqlite:///data/x.db"\n')
    monkeypatch.chdir(tmp_path)

    cfg = load_config(None)

    assert cfg.path == Path("config.toml")
    assert cfg.schedule.cron == "0 9 * * 5"
    assert cfg.database_url == f"sqlite:///{tmp_path.resolve() / 'data' / 'x.db'}"


# ---------------------------------------------------------------- refusing a bad config


THEME = '[[themes]]\nslug = "{slug}"\nname = "{slug}"\nfallback = {fallback}\n'

BAD_CONFIGS = [
    pytest.param('[smtp]\nhots = "x"\n', ["smtp.hots", "unknown key"], id="unknown-key"),
    pytest.param('[smpt]\nhost = "x"\n', ["smpt", "unknown key"], id="unknown-section"),
    pytest.param('[smtp]\nport = "abc"\n', ["smtp.port", "integer"], id="wrong-type"),
    pytest.param(
        '[schedule]\ntimezone = "Mars/Olympus"\n', ["schedule.timezone", "Mars/Olympus"], id="time-zone"
    ),
    pytest.param('[schedule]\ncron = "0 8 * *"\n', ["schedule.cron", "5 fields"], id="cron-field-count"),
    pytest.param('[schedule]\ncron = "61 8 * * 1"\n', ["schedule.cron", "61"], id="cron-minute-61"),
    pytest.param('[schedule]\ncron = "0 8 * * 9"\n', ["schedule.cron", "day of week '9'"], id="cron-day-9"),
    pytest.param('[digest]\nsubject = "{nope}"\n', ["digest.subject", "{nope}"], id="subject-field"),
    pytest.param('[digest]\nsubject = "{name.nope}"\n', ["digest.subject"], id="subject-attribute"),
    pytest.param(
        "[digest]\nmin_articles = 9\nmax_articles = 5\n",
        ["digest", "min_articles is larger than max_articles"],
        id="min-above-max",
    ),
    pytest.param(
        THEME.format(slug="ai", fallback="true") + THEME.format(slug="other", fallback="true"),
        ["themes", "exactly one theme needs fallback = true (found 2)"],
        id="two-fallbacks",
    ),
    pytest.param(
        THEME.format(slug="ai", fallback="false"),
        ["themes", "exactly one theme needs fallback = true (found 0)"],
        id="no-fallback",
    ),
    pytest.param(
        THEME.format(slug="ai", fallback="false") + THEME.format(slug="ai", fallback="true"),
        ["themes", "theme slug 'ai' is defined twice"],
        id="duplicate-slug",
    ),
    pytest.param(
        "[articles]\nchrome = ['Advertisement', '(unclosed']\n",
        ["articles.chrome", "bad regular expression '(unclosed'"],
        id="bad-regex",
    ),
    pytest.param("[delivery]\nretry_minutes = []\n", ["delivery.retry_minutes"], id="no-retry-delays"),
    pytest.param(
        '[[feeds.sources]]\nurl = "file:///etc/passwd"\n',
        ["feeds.sources.0.url", "file:///etc/passwd", "only http"],
        id="feed-local-file",
    ),
    pytest.param(
        '[[feeds.sources]]\nurl = "https://a.example/feed"\ntheme = "nope"\n',
        ["feed https://a.example/feed: unknown theme 'nope'"],
        id="feed-unknown-theme",
    ),
    pytest.param(
        '[[feeds.sources]]\nurl = "https://a.example/f"\n[[feeds.sources]]\nurl = "https://a.example/f"\n',
        ["feeds.sources", "feed https://a.example/f is listed twice"],
        id="feed-twice",
    ),
    pytest.param("[feeds]\ninterval_minutes = 0\n", ["feeds.interval_minutes"], id="feed-interval-zero"),
    pytest.param(
        '[bounces]\nsendgrid_public_key = "bm90IGEga2V5"\n',
        ["bounces.sendgrid_public_key", "not a base64 DER public key"],
        id="sendgrid-key",
    ),
    pytest.param('[smtp]\nhost = "x\n', ["invalid TOML", "line 2"], id="toml-syntax"),
]


@pytest.mark.parametrize(("body", "expected"), BAD_CONFIGS)
def test_a_bad_config_is_refused_with_one_line_naming_the_file_and_key(
    tmp_path: Path, body: str, expected: list[str]
) -> None:
    path = _toml(tmp_path, body)

    message = _refusal(path)

    assert message.startswith(f"{path}: "), message
    for part in expected:
        assert part in message


def test_a_missing_config_file_is_refused_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "missing.toml"
    assert _refusal(missing) == f"{missing}: config file not found"

    monkeypatch.setenv("MAILER_CONFIG", str(tmp_path / "also-missing.toml"))
    assert "also-missing.toml: config file not found" in _refusal(None)


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        pytest.param("MAILER_SMTP_PORT", "abc", "smtp.port", id="int"),
        pytest.param("MAILER_CATCHER_ENABLED", "maybe", "catcher.enabled", id="bool"),
        pytest.param("MAILER_SCHEDULE_TIMEZONE", "Mars/Olympus", "schedule.timezone", id="zone"),
        pytest.param("MAILER_DELIVERY_RETRY_MINUTES", "1,5", "delivery.retry_minutes", id="list-not-json"),
    ],
)
def test_a_bad_environment_value_is_refused_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, key: str
) -> None:
    path = write_config(tmp_path)
    monkeypatch.setenv(name, value)

    message = _refusal(path)

    assert message.startswith(f"environment variable {name}: {key}: "), message


# Every MAILER_* variable that is not a config key, plus the passwords (keys set only this way).
MAILER_OWN_VARIABLES = {
    "MAILER_SECRET_KEY": "k" * 32,
    "MAILER_TEST_POSTGRES_URL": "postgresql://mailer@localhost/mailer_test",
    "MAILER_BOUNCES_IMAP_PASSWORD": "imap-password",
    "MAILER_SMTP_PASSWORD": "smtp-password",
    "MAILER_WEB_PASSWORD": "web-password",
}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("MAILER_SMPT_HOST", "unknown key (did you mean MAILER_SMTP_HOST?)", id="typo"),
        pytest.param("mailer_databse_url", "unknown key (did you mean MAILER_DATABASE_URL?)", id="lower"),
        pytest.param("MAILER_SECRETKEY", "unknown key (did you mean MAILER_SECRET_KEY?)", id="not-a-key"),
        pytest.param("MAILER_NEWSLETTER_NAME", "unknown key", id="no-such-section"),
    ],
)
def test_a_misspelt_environment_variable_is_refused_like_a_misspelt_key_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, expected: str
) -> None:
    path = write_config(tmp_path)
    for own, value in {**MAILER_OWN_VARIABLES, "MAILER_CONFIG": str(path)}.items():
        monkeypatch.setenv(own, value)
    assert load_config(str(path)).smtp.password == "smtp-password"
    monkeypatch.setenv(name, "mail.example.com")

    assert _refusal(path) == f"environment variable {name}: {expected}"


# ---------------------------------------------------------------- through the real CLI


def _start_mailer(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`python -m mailer ARGS` in a fresh process, without the developer's MAILER_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("MAILER_")}
    return subprocess.Popen(
        [sys.executable, "-m", "mailer", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**clean, **(env or {})},
    )


# (config body, extra environment, what the one stderr line must say)
CLI_REFUSALS = {
    "unknown-key": ('[smtp]\nhots = "x"\n', {}, "smtp.hots: unknown key"),
    "bad-cron": ('[schedule]\ncron = "0 8 * * 9"\n', {}, "schedule.cron: invalid cron expression"),
    "bad-env": ("", {"MAILER_SMTP_PORT": "abc"}, "environment variable MAILER_SMTP_PORT: smtp.port"),
    "misspelt-env": ("", {"MAILER_SMPT_HOST": "x"}, "environment variable MAILER_SMPT_HOST: unknown key"),
}


def test_the_cli_refuses_to_start_with_exit_1_and_one_stderr_line(tmp_path: Path) -> None:
    # The processes run side by side: each one pays the full import of the CLI.
    procs = {}
    for case, (body, env, _expected) in CLI_REFUSALS.items():
        path = _toml(tmp_path, body, f"{case}.toml")
        procs[case] = _start_mailer(["--config", str(path), "schedule"], env)
    outputs = {case: proc.communicate(timeout=60) for case, proc in procs.items()}

    for case, (stdout, stderr) in outputs.items():
        expected = CLI_REFUSALS[case][2]
        assert procs[case].returncode == 1, (case, stderr)
        assert stdout == "", case
        assert "Traceback" not in stderr, (case, stderr)
        assert len(stderr.splitlines()) == 1, (case, stderr)
        assert stderr.startswith("error: "), (case, stderr)
        assert expected in stderr, (case, stderr)


def test_the_cli_starts_with_the_config_named_by_mailer_config(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[schedule]\ncron = "15 7 * * 1-5"\ntimezone = "America/New_York"\n')

    proc = _start_mailer(["schedule", "--count", "5"], {"MAILER_CONFIG": str(path)})
    stdout, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 0, stderr
    lines = stdout.splitlines()
    assert lines[0] == "schedule: 15 7 * * 1-5 (America/New_York)"
    assert {line.split()[0] for line in lines[1:]} == {"Mon", "Tue", "Wed", "Thu", "Fri"}
    assert all(" 07:15 " in line for line in lines[1:])


# ---------------------------------------------------------------- cron day numbers


@pytest.mark.parametrize(
    ("cron", "days"),
    [
        pytest.param("0 8 * * 1", {"Mon"}, id="1-is-monday"),
        pytest.param("0 8 * * 0", {"Sun"}, id="0-is-sunday"),
        pytest.param("0 8 * * 7", {"Sun"}, id="7-is-sunday"),
        pytest.param("0 8 * * 1-5", {"Mon", "Tue", "Wed", "Thu", "Fri"}, id="1-5-is-weekdays"),
        pytest.param("0 8 * * 6,0", {"Sat", "Sun"}, id="6,0-is-the-weekend"),
    ],
)
def test_cron_day_of_week_numbers_follow_cron(cron: str, days: set[str]) -> None:
    zone = "Europe/Berlin"
    slots = Schedule(cron, zone).next_slots(datetime(2026, 3, 1, tzinfo=UTC), 10)

    local = [slot.local(zone) for slot in slots]
    assert len(local) == 10
    assert {t.strftime("%a") for t in local} == days
    assert all((t.hour, t.minute) == (8, 0) for t in local)


def test_a_cron_day_number_is_accepted_by_the_config(tmp_path: Path) -> None:
    cfg = load_config(str(_toml(tmp_path, '[schedule]\ncron = "0 8 * * 7"\n')))

    assert cfg.schedule.cron == "0 8 * * 7"


# ---------------------------------------------------------------- secrets


def test_the_smtp_password_comes_from_the_environment_and_is_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILER_SMTP_PASSWORD", SECRET)
    monkeypatch.setenv("MAILER_WEB_PASSWORD", SECRET + "-web")

    cfg = load_config(str(write_config(tmp_path)))

    assert cfg.smtp.password == SECRET
    assert cfg.web.password == SECRET + "-web"
    for shown in (repr(cfg.settings), str(cfg.settings), repr(cfg.smtp), repr(cfg.web)):
        assert SECRET not in shown


@pytest.mark.parametrize(
    ("body", "env"),
    [
        pytest.param('[smtp]\nport = "abc"\n', {}, id="wrong-type"),
        pytest.param('[smtp]\nhots = "x"\n', {}, id="unknown-key"),
        pytest.param("", {"MAILER_SMTP_PORT": "abc"}, id="bad-env-value"),
        pytest.param("", {"MAILER_SMTP": "{oops"}, id="section-env-not-json"),
        pytest.param(
            f'[smtp]\npassword = "{SECRET}"\nport = "abc"\n', {}, id="file-password-beside-a-bad-key"
        ),
        pytest.param(f'[smtp]\npassword = "{SECRET}\n', {}, id="file-password-unterminated"),
    ],
)
def test_config_errors_never_contain_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, env: dict[str, str]
) -> None:
    monkeypatch.setenv("MAILER_SMTP_PASSWORD", SECRET)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    message = _refusal(_toml(tmp_path, body))

    assert SECRET not in message


def test_base_url_must_be_https_except_on_loopback(tmp_path):
    with pytest.raises(ConfigError, match=r"digest\.base_url: base_url must use https"):
        load_config(str(write_config(tmp_path, 2525, digest={"base_url": "http://news.example.org"})))
    assert load_config(str(write_config(tmp_path, 2525, digest={"base_url": "https://news.example.org/"})))
    assert load_config(str(write_config(tmp_path, 2525, digest={"base_url": "http://localhost:8080"})))
