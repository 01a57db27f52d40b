"""URLs the user gives (endpoint, proxy): checked whole, as requests will use them, and
shown without their secrets.

A URL's credentials and query values are secrets (a token is often one); its scheme, host
and path are shown, so that an error or a log line says which endpoint it is about.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Optional

import requests.models as requests_models
import requests.utils as requests_utils


def redact_url(url: str) -> str:
    """The URL with its credentials and query values replaced by ``***``, for logs and reprs.

    Plain string work, no URL parser: a URL bad enough to be refused must be
    shown safely too (``://user:pw@host`` has no netloc to a parser).
    """
    address, _, _fragment = url.partition("#")
    base, question, query = address.partition("?")
    base = _USERINFO.sub(lambda match: (match.group("head") or "") + "***@", base, count=1)
    if question:
        # A bare "?TOKEN" has no name to keep: all of it goes.
        pairs = [pair.partition("=") for pair in query.split("&") if pair]
        base += "?" + "&".join(f"{name}=***" if eq else "***" for name, eq, _ in pairs)
    return base


# Everything between "//" (or the start) and the last "@" of the authority: a user name
# can be a token as much as a password can.
_USERINFO = re.compile(r"^(?P<head>[^/?#@]*//)?[^/?#]*@")


_BROKEN_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _broken_escape_in(parts: urllib.parse.SplitResult) -> Optional[str]:
    """The part of a URL holding a % that starts no two-hex-digit escape, or None."""
    credentials, _, host = parts.netloc.rpartition("@")
    for name, text in (("credentials", credentials), ("host", host), ("path", parts.path),
                       ("query", parts.query), ("fragment", parts.fragment)):  # fmt: skip
        if _BROKEN_ESCAPE.search(text):
            return name
    return None


def url_problem(url: str) -> Optional[str]:
    """What keeps ``url`` from being an endpoint, in words that show no part of it; or None."""
    if url != url.strip() or any(ord(char) < 0x21 or char == "\x7f" for char in url):
        return "it holds white space or control characters"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises for a port that is not a number from 0 to 65535
    except ValueError as exc:
        return "it cannot be parsed" + (" (a bad port)" if "port" in str(exc).lower() else "")
    if parts.scheme not in ("http", "https"):
        return "the scheme is not http or https"
    if not parts.hostname:
        return "it has no host"
    if port == 0:
        return "port 0 cannot be connected to"
    if "@" in parts.path[1:].partition("/")[0]:
        # "user:12/34@host" reads as host "user", port 12: a password holding a "/"
        return (
            "its first path segment holds an @ "
            "(a / of credentials is written %2F, an @ of the path %40)"
        )
    broken = _broken_escape_in(parts)
    if broken is not None:  # requests would re-quote every % in the URL: another URL
        return f"a % in its {broken} is not followed by two hex digits (write a literal % as %25)"
    try:  # what requests itself will refuse when it prepares the first request
        requests_models.PreparedRequest().prepare_url(url, None)
    except Exception:
        return "requests cannot use it (check the host name)"
    try:  # sent as HTTP Basic auth, which requests encodes as Latin-1
        "".join(requests_utils.get_auth_from_url(url)).encode("latin-1")
    except UnicodeEncodeError:
        return "its credentials hold characters beyond Latin-1 (HTTP Basic auth)"
    return None


def shown_url(url: str) -> str:
    """A refused URL as its error may show it: without credentials and query values, and
    only its scheme and host when a stray % may sit in a token of its path."""
    try:
        parts: Optional[urllib.parse.SplitResult] = urllib.parse.urlsplit(url)
    except ValueError:  # an unclosed IPv6 bracket, say
        parts = None
    if "@" in url and (parts is None or "@" not in parts.netloc):
        # The parser found no credentials, yet "@" is there: any of it may be a password
        # holding "/", "?" or "#" (or a URL missing its "//").
        return url.partition(":")[0] + "://***"
    if parts is not None and _broken_escape_in(parts) is not None:
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/..."
    return redact_url(url)
