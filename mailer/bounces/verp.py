"""VERP: the envelope sender of each digest message names its delivery.

With `[bounces] address = "bounces@example.org"`, the MAIL FROM of delivery 123 is
`bounces+123-<mac>@example.org` (mailer.tokens.Tokens.verp), so the bounce, sent to that
address by whichever MTA gave up, maps to exactly one delivery without trusting anything
in the bounced message. Unset, the envelope sender is smtp.from_address, as before.
"""

from __future__ import annotations

from mailer.config import Config
from mailer.tokens import Tokens


def envelope_sender(cfg: Config, tokens: Tokens, delivery_id: int) -> str:
    address = cfg.bounces.address
    if not address:
        return cfg.smtp.from_address
    local, _, domain = address.rpartition("@")
    return f"{local}+{tokens.verp(delivery_id)}@{domain}"


def token_of(cfg: Config, address: str) -> str | None:
    """The VERP token in `address` when it is the bounce address plus one (any case), else
    None. The token is not verified here: Tokens.verp_delivery does that."""
    bounce = cfg.bounces.address.lower()
    if not bounce:
        return None
    local, _, domain = bounce.rpartition("@")
    got_local, _, got_domain = address.strip().strip("<>").lower().rpartition("@")
    base, plus, token = got_local.partition("+")
    if got_domain != domain or base != local or not plus or not token:
        return None
    return token


def delivery_of(cfg: Config, tokens: Tokens, address: str) -> int | None:
    """The delivery a bounce address names, or None (not ours, forged, or no token)."""
    token = token_of(cfg, address)
    return tokens.verp_delivery(token) if token else None
