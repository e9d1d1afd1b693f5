"""The command line: `mailer.cli:main` is the entry point, `cli` the click group.

One module per command group; importing them registers their commands on `cli`.
"""

from mailer.cli import articles, bounces, digest, feeds, schedule, serve, subscribers
from mailer.cli.base import App, cli, command, main

__all__ = [
    "App",
    "articles",
    "bounces",
    "cli",
    "command",
    "digest",
    "feeds",
    "main",
    "schedule",
    "serve",
    "subscribers",
]
