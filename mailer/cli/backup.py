"""`mailer backup` and `mailer restore` (the work is mailer.backup's; see its invariants).

Neither opens the database through App.db: that would migrate it, and a backup must not
change its source, nor a restore its target before the backup file has been checked."""

from __future__ import annotations

from pathlib import Path

import click

from mailer.cli.base import App, command


@command(None, "backup")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
def backup_cmd(app: App, file: Path, force: bool) -> None:
    """Back up the database to FILE, even while the service runs.

    SQLite: the online backup API. PostgreSQL: pg_dump's custom format (the PostgreSQL
    client tools must be on the PATH). FILE appears whole or not at all."""
    from mailer import backup

    click.echo(backup.backup(app.cfg.database_url, file, force))


@command(None, "restore")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace a database that has subscribers, articles or digests.")
def restore_cmd(app: App, file: Path, force: bool) -> None:
    """Replace the database with a backup made by `mailer backup`.

    Then it is migrated to this mailer's schema. A database that is not empty is replaced
    only with --force; a bad FILE changes nothing."""
    from mailer import backup

    click.echo(backup.restore(app.cfg.database_url, file, force))
