"""``check``: the source document's troubleshooting section, as one command.

Sends an empty batch to the endpoint, as the SDK would, and says in plain
words what happened: DNS or connection failure, TLS error, timeout, redirect
(and where to), 401/403 (the token), 404 (the path), 5xx, or success, with
the round-trip time. Then sends a CORS preflight, as a browser would, and
says whether the browser SDK could post there too. Exit code 0 when the
endpoint accepts batches.
"""

from __future__ import annotations

import argparse
import gzip
import time
import uuid

import requests

from ..config import Config
from ..events import batch_body
from ..transport import USER_AGENT, describe_error, keep_authorization
from ..urls import redact_url
from ._common import add_header_argument, parse_headers

NAME = "check"
HELP = "send an empty batch to an endpoint and explain the answer"
TIMEOUT_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", required=True)
    add_header_argument(parser)
    parser.add_argument(
        "--compression", choices=["gzip"], help="send the batch gzip-compressed, as the SDK would"
    )


def explain(status: int, location: str, body: str) -> tuple[bool, str]:
    """Whether the endpoint accepts batches, and why, for an HTTP answer."""
    if 200 <= status < 300:
        return True, f"OK: HTTP {status}, the endpoint accepts batches"
    if 300 <= status < 400:
        where = redact_url(location) if location else "nowhere (no Location header)"
        return False, (
            f"HTTP {status}: the endpoint redirects to {where}. The SDK does not follow "
            "redirects (your token would travel along): set endpoint to the final URL"
        )
    hints = {
        401: "the endpoint wants credentials: check the Authorization header and the token",
        403: "the token was refused: check that it is valid and allowed to post events",
        404: "nothing there: check the endpoint's path (and its /v1 style version part)",
        405: "the endpoint does not accept POST",
        413: "the body is too large for the endpoint (the SDK splits batches answered 413)",
    }
    if status in hints:
        return False, f"HTTP {status}: {hints[status]}"
    if status in (429, 503):
        return False, (
            f"HTTP {status}: the endpoint is overloaded or rate-limited; the SDK would pause "
            "all sending until its Retry-After, then resume one request at a time"
        )
    if status >= 500 or status == 408:
        return False, f"HTTP {status}: the endpoint failed; the SDK would retry: check its logs"
    return False, f"HTTP {status}: rejected: {body[:200] or '(empty body)'}"


def cors_report(session: requests.Session, endpoint: str, header_names: list[str]) -> str:
    wanted = sorted({"content-type", "idempotency-key", *(name.lower() for name in header_names)})
    try:
        answer = session.options(
            endpoint,
            headers={
                "Origin": "https://shop.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": ", ".join(wanted),
            },
            timeout=TIMEOUT_S,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        return f"CORS: the preflight failed ({describe_error(exc, TIMEOUT_S)})"
    missing = []
    if not answer.headers.get("Access-Control-Allow-Origin"):
        missing.append("Access-Control-Allow-Origin")
    if "POST" not in answer.headers.get("Access-Control-Allow-Methods", "").upper():
        missing.append("Access-Control-Allow-Methods: POST")
    allowed = answer.headers.get("Access-Control-Allow-Headers", "").lower()
    unlisted = [name for name in wanted if name not in allowed and allowed.strip() != "*"]
    if unlisted:
        missing.append(f"Access-Control-Allow-Headers: {', '.join(unlisted)}")
    if not missing:
        return "CORS: ok, browsers may post here too"
    return (
        f"CORS: missing {'; '.join(missing)}. Fine for this SDK (servers send no preflight); "
        "the browser SDK needs them"
    )


def run(args: argparse.Namespace) -> int:
    headers = parse_headers(args.header)
    config = Config(endpoint=args.endpoint, headers=headers)  # the SDK's own rules
    endpoint = config.endpoint
    auth = keep_authorization if config.sets_authorization else None  # sent as the SDK sends
    shown = redact_url(endpoint)
    body = batch_body([], f"b_check_{uuid.uuid4().hex}", time.time_ns() // 1_000_000)
    if args.compression == "gzip":
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    session = requests.Session()
    session.headers.update({"User-Agent": USER_AGENT, "Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        answer = session.post(
            endpoint, data=body, headers=headers, auth=auth, timeout=TIMEOUT_S,
            allow_redirects=False,
        )  # fmt: skip
    except requests.RequestException as exc:
        print(f"POST {shown}: failed after {_ms(started)}: {describe_error(exc, TIMEOUT_S)}")
        return 1
    rtt = _ms(started)
    accepted, explanation = explain(
        answer.status_code, answer.headers.get("Location", ""), answer.text.strip()
    )
    print(f"POST {shown}: HTTP {answer.status_code} in {rtt}")
    print(explanation)
    print(cors_report(session, endpoint, list(headers)))
    return 0 if accepted else 1


def _ms(started: float) -> str:
    return f"{(time.perf_counter() - started) * 1000:.0f} ms"
