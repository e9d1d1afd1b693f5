"""User-facing errors: each carries one line that names the problem and where it is."""


class MailerError(Exception):
    """An error the CLI prints as one line (no traceback) before exiting with status 1."""


class ConfigError(MailerError):
    """The configuration is invalid; the service refuses to start."""


class InputError(MailerError):
    """Bad user input: an article file, a CSV row, a command-line value."""


class NotFound(MailerError):
    """A referenced article, subscriber or digest does not exist."""
