"""The List-Unsubscribe URL: https, and answering.

Every message carries `List-Unsubscribe: <{digest.base_url}/unsubscribe/<token>>` and
`List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058, covered by the DKIM
signature). Mailbox providers honour one-click unsubscribe only over https, and POST to
that URL from their own servers, so the check asks what they would: a GET of the preview
unsubscribe page (`/unsubscribe/preview`, which belongs to no reader and changes nothing)
under base_url, over https with the certificate verified against the system's CAs (as a
provider does; `SSL_CERT_FILE` adds a CA, e.g. in tests), no redirect followed, within the
doctor's timeout. 200 is ok; a redirect is an error (a POST is not followed through one),
as is any other status or no answer.
"""

from __future__ import annotations

import http.client
import ssl
from urllib.parse import urlsplit

from mailer.config import Config
from mailer.doctor import Check, Options, error, ok

NAME = "unsubscribe"


def unsubscribe(cfg: Config, options: Options) -> Check:
    from mailer.render import PREVIEW_UNSUBSCRIBE

    base = cfg.digest.base_url
    url = base + PREVIEW_UNSUBSCRIBE
    parts = urlsplit(url)
    if parts.scheme != "https":
        return error(
            NAME,
            f"{base} is not https: readers' mail providers will not offer one-click unsubscribe",
            "set digest.base_url to the public https address mailer's web server is reached at",
        )
    host = parts.hostname or ""
    conn = http.client.HTTPSConnection(
        host, parts.port or 443, timeout=options.timeout, context=ssl.create_default_context()
    )
    try:
        conn.request("GET", parts.path, headers={"User-Agent": "mailer-doctor"})
        reply = conn.getresponse()
        status, reason, location = reply.status, reply.reason, reply.getheader("Location", "")
    except ssl.SSLCertVerificationError as exc:
        return error(
            NAME,
            f"{url}: TLS certificate not trusted: {exc.verify_message or exc.reason}",
            "serve it with a certificate from a public CA (e.g. Let's Encrypt): providers check it",
        )
    except (OSError, http.client.HTTPException) as exc:
        reason = f"no answer within {options.timeout:g} s" if isinstance(exc, TimeoutError) else exc
        return error(NAME, f"{url}: {reason}", f"check that {host} resolves and mailer's web server answers")
    finally:
        conn.close()
    if status == 200:
        return ok(NAME, f"{url}: 200 over https (certificate verified); one-click (RFC 8058) on")
    if 300 <= status < 400:
        return error(
            NAME,
            f"{url}: {status} {reason} to {location or '?'}",
            "set digest.base_url to the final address: one-click POSTs are not followed through redirects",
        )
    return error(
        NAME,
        f"{url}: {status} {reason}",
        "base_url must reach mailer's web server (a proxy passing /unsubscribe/ through to it)",
    )
