"""The command line: `mailer.cli:main` is the entry point, `cli` the click group.

One module per command group (`subscribers`, `articles`...); `cli` imports each only when
one of its commands runs or shows its help (mailer.cli.base.COMMANDS), so this package
imports nothing but the frame.
"""

from mailer.cli.base import App, cli, command, main

__all__ = ["App", "cli", "command", "main"]
