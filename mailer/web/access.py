"""Who may see what, and which requests may change anything.

Editor's pages (dashboard, preview, past digests, the mail catcher with every reader's
unsubscribe link, unsent articles) are served without a password only to a request that
provably comes from this machine and not through anything else:

* `web.host` is loopback (the server is not bound to a public address),
* `digest.base_url` is loopback (the public URL is not a proxy in front of us; a real
  deployment needs an https base_url on a public host, i.e. a TLS proxy, so it never
  qualifies),
* the request carries no proxy header (Forwarded, X-Forwarded-*, X-Real-IP, Via: a local
  proxy forwarding the world would otherwise look like a local browser),
* the peer address is loopback, and
* the Host header names a loopback host (a DNS-rebinding page at evil.example resolving to
  127.0.0.1 sends Host: evil.example).

The waitress settings (mailer.service.WEB_SERVER) keep proxy headers in the environment
so this check sees them; nothing here trusts their values. Every other request needs the
password (web.password / MAILER_WEB_PASSWORD, HTTP Basic), and without one configured
the editor's pages do not exist (404). `mailer.settings.is_loopback` is the only place that decides
whether a host is loopback.

State-changing POSTs are refused (403) when the browser says they come from another
site: Sec-Fetch-Site other than same-origin/none or, from a browser too old to send that,
an Origin that is neither our Host nor base_url's (or "null"). Our pages send
`Referrer-Policy: same-origin` so their own forms carry a real Origin (no-referrer would
make it "null") while links to other sites still carry no referrer. The exception is
RFC 8058 one-click unsubscribe, whose body is `List-Unsubscribe=One-Click`: mailbox
providers send it from their servers, and an unsubscribe only ever does what a reader
asked for.
"""

from __future__ import annotations

import hmac
from typing import Literal
from urllib.parse import SplitResult, urlsplit

from flask import Request, Response, abort

from mailer.config import Config
from mailer.settings import is_loopback

PROXY_HEADERS = ("Forwarded", "X-Real-IP", "Via")
PROXY_PREFIX = "X-Forwarded-"
SAME_SITE_FETCH = ("same-origin", "none")
ONE_CLICK_BODY = ("List-Unsubscribe", "One-Click")


def _split(url: str) -> SplitResult | None:
    """urlsplit, or None for what it cannot parse (a header is whatever the client sent)."""
    try:
        return urlsplit(url)
    except ValueError:  # an unclosed "[", say
        return None


def _host_of(netloc: str) -> str:
    """The host of `host[:port]` or `[v6]:port`; "" when malformed."""
    parts = _split(f"//{netloc}")
    return (parts.hostname or "") if parts else ""


def loopback_only(cfg: Config) -> bool:
    """The configuration lets local requests see the editor's pages without a password."""
    return is_loopback(cfg.web.host) and is_loopback(urlsplit(cfg.digest.base_url).hostname or "")


def editor_mode(cfg: Config) -> Literal["open on loopback", "password", "off"]:
    """How the editor's pages are served, for the start-up banner."""
    if loopback_only(cfg):
        return "open on loopback"
    return "password" if cfg.web.password else "off"


def proxied(request: Request) -> bool:
    return any(name in request.headers for name in PROXY_HEADERS) or any(
        name.lower().startswith(PROXY_PREFIX.lower()) for name, _value in request.headers.items()
    )


def local_request(cfg: Config, request: Request) -> bool:
    return (
        loopback_only(cfg)
        and not proxied(request)
        and is_loopback(request.remote_addr or "")
        and is_loopback(_host_of(request.host))
    )


def password_given(cfg: Config, request: Request) -> bool:
    if not cfg.web.password:
        return False
    auth = request.authorization
    given = (auth.password or "") if auth else ""
    return hmac.compare_digest(given.encode(), cfg.web.password.encode())


def is_editor(cfg: Config, request: Request) -> bool:
    return local_request(cfg, request) or password_given(cfg, request)


def require_editor(cfg: Config, request: Request) -> Response | None:
    """None when the editor's page may be served; else 404 (no password set) or 401."""
    if local_request(cfg, request):
        return None
    if not cfg.web.password:
        abort(404)
    if password_given(cfg, request):
        return None
    return Response("Authentication required\n", 401, {"WWW-Authenticate": 'Basic realm="mailer editor"'})


def cross_site(cfg: Config, request: Request) -> bool:
    """The browser tells us this request was sent by a page of another site."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:  # every current browser sends it, and a page cannot forge it
        return fetch_site.lower() not in SAME_SITE_FETCH
    origin = request.headers.get("Origin")
    if origin is None:
        return False  # not a browser, or one that says nothing: the tokens are the gate
    parts = _split(origin)  # "null" (a page can ask for it) has no scheme: refused
    ours = {urlsplit(cfg.digest.base_url).netloc.lower(), request.host.lower()}
    return parts is None or parts.scheme not in ("http", "https") or parts.netloc.lower() not in ours


def one_click(request: Request) -> bool:
    """The body is RFC 8058's `List-Unsubscribe=One-Click`."""
    return request.form.get(ONE_CLICK_BODY[0]) == ONE_CLICK_BODY[1]
