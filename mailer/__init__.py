"""mailer: a self-hosted themed weekly digest newsletter."""

__version__ = "0.1.0"
