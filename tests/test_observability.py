"""Logging and stats (SPEC section 8): no secrets anywhere, every event in exactly one bucket."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from helpers import assert_balanced
from receiver import Receiver, Reply, refused_url

import campaign_cart_analytics as cca

SECRETS = ("s3cret-static", "s3cret-callable", "pa55word")
# urllib3's own DEBUG lines show the request line, query included: only our logger is held
# to hiding query values; header values and passwords must be absent from every logger.


def test_the_logger_is_named_and_silent_by_default() -> None:
    logger = logging.getLogger("campaign_cart_analytics")
    assert any(isinstance(h, logging.NullHandler) for h in logger.handlers)


def test_no_header_value_or_password_reaches_any_log_record(
    receiver: Receiver, sdk_logs: pytest.LogCaptureFixture
) -> None:
    receiver.script(
        Reply(503), Reply(401, body=b"token expired"), Reply(301, headers={"Location": "/x"})
    )
    headers = {"Authorization": "Bearer s3cret-static", "X-Api-Key": lambda: "s3cret-callable"}
    client = cca.Analytics(
        receiver.url, headers=headers, batch_size=1, retry_delay_ms=10, max_retries=1
    )
    for name in ("retried then rejected", "redirected", "delivered"):
        client.track(name)
        client.flush(timeout=5)
    down_url = refused_url().replace("http://", "http://user:pa55word@") + "?key=s3cret-query"
    down_headers = {"X-Static": "Bearer s3cret-static", "X-Api-Key": lambda: "s3cret-callable"}
    down = cca.Analytics(down_url, headers=down_headers, retry_delay_ms=10, max_retries=1)
    down.track("e")
    down.flush(timeout=5)
    client.shutdown(timeout=1)
    down.shutdown(timeout=1)
    text = (
        "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in sdk_logs.records)
        + repr(client)
        + repr(down)
        + repr(client.stats())
        + repr(down.stats())
    )
    ours = [r.getMessage() for r in sdk_logs.records if r.name == "campaign_cart_analytics"]
    assert not any("s3cret-query" in message for message in ours)
    assert "token expired" in text  # the logs did capture the story...
    for secret in SECRETS:
        assert secret not in text  # ...without a secret in it
    assert receiver.requests[0].headers["authorization"] == "Bearer s3cret-static"


def test_every_tracked_event_lands_in_exactly_one_bucket(receiver: Receiver) -> None:
    receiver.respond = lambda request: Reply(
        400 if request.events[0]["event"] == "rejected" else 202
    )
    reported: list[BaseException] = []

    def transform(event: dict[str, Any]) -> Any:
        if event["event"] == "sampled_out":
            return None
        if event["event"] == "broken":
            raise KeyError("oops")
        return event

    client = cca.Analytics(
        receiver.url,
        batch_size=1,
        transform_function=transform,
        on_error=lambda events, error: reported.append(error),
    )
    for name in ("kept", "sampled_out", "broken", "rejected", "kept"):
        client.track(name)
        assert_balanced(client.stats())
    assert client.flush(timeout=5) is False
    client.shutdown(timeout=1)
    client.track("too late")
    stats = client.stats()
    assert_balanced(stats)
    assert (stats.tracked, stats.delivered, stats.filtered) == (6, 2, 1)
    assert (stats.dropped_transform_error, stats.dropped_delivery, stats.dropped_shutdown) == (
        1,
        1,
        1,
    )
    assert stats.dropped == 3 and stats.queued == 0
    assert [type(e) for e in reported] == [
        cca.TransformError,
        cca.DeliveryError,
        cca.ShutdownDropError,  # "too late": tracked after shutdown
    ]


def test_a_full_queue_drops_counts_warns_once_and_reports(
    receiver: Receiver, sdk_logs: pytest.LogCaptureFixture
) -> None:
    receiver.respond = lambda request: Reply(202, delay=0.5)  # the worker is busy
    reported: list[BaseException] = []
    client = cca.Analytics(
        receiver.url,
        batch_size=2,
        max_queue_size=4,
        on_error=lambda events, error: reported.append(error),
    )
    results = [client.track("e", {"i": i}) for i in range(20)]
    stats = client.stats()
    assert stats.dropped_queue_full >= 14 and results.count(None) == stats.dropped_queue_full
    assert len(reported) == stats.dropped_queue_full
    assert all(isinstance(e, cca.QueueFullError) for e in reported)
    warnings = [r for r in sdk_logs.records if "queue full" in r.getMessage()]
    assert len(warnings) == 1
    assert client.flush(timeout=5) is False  # its window lost events to the full queue
    assert client.stats().queued == 0
    assert client.flush(timeout=5) is True
    assert_balanced(client.stats())
    client.shutdown(timeout=1)
