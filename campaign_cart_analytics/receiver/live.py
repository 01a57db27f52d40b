"""The live view: ``GET /`` serves a page that lists events as they arrive.

The page is three static files shipped beside this module (``live.html``,
``live.js``, ``live.css``): no build step, no framework. Its script polls
``GET /events`` and ``GET /stats`` from the same origin, so the page itself
holds no data and is public even when the receiver has a token; the script
then asks for the token, keeps it in the tab's ``sessionStorage`` (never in a
URL) and sends it as an ``Authorization`` header.

Event names and properties come from the internet, so the script writes them
with ``textContent`` only, and every answer here carries a strict
Content-Security-Policy: script and style from this origin as separate files,
requests to this origin only; nothing inline, no ``eval``, no frames, no forms,
no images, no plugins. Even a rendering bug cannot run a hostile event's markup.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from importlib import resources
from typing import Any, Callable

StartResponse = Callable[[str, list[tuple[str, str]]], Any]

# path -> (file beside this module, Content-Type)
_ASSETS = {
    "/": ("live.html", "text/html; charset=utf-8"),
    "/live.js": ("live.js", "text/javascript; charset=utf-8"),
    "/live.css": ("live.css", "text/css; charset=utf-8"),
}
PATHS = frozenset(_ASSETS)

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
_SECURITY_HEADERS = [
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),  # the script is run only as the script it is
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),  # frame-ancestors, for browsers that predate it
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cache-Control", "no-cache"),  # a receiver upgraded in place serves its new page at once
]


def serve(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Answer a request for one of ``PATHS``: the file on GET and HEAD, else a JSON 405."""
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
    if method not in ("GET", "HEAD"):
        body = json.dumps({"success": False, "error": f"{method[:20]} is not allowed here"})
        payload = body.encode()
        start_response(
            "405 Method Not Allowed",
            [
                ("Allow", "GET, HEAD"),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload))),
            ],
        )
        return [payload]
    name, content_type = _ASSETS[path]
    payload = _read(name)
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(payload))),
        *_SECURITY_HEADERS,
    ]
    start_response("200 OK", headers)
    return [b"" if method == "HEAD" else payload]


@functools.cache
def _read(name: str) -> bytes:
    """A file of the page, read once: it is package data and does not change."""
    return (resources.files("campaign_cart_analytics.receiver") / name).read_bytes()
