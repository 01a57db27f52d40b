"""Small checks shared by the tests."""

from __future__ import annotations

import campaign_cart_analytics as cca


def assert_balanced(stats: cca.Stats) -> None:
    """Every tracked event is in exactly one bucket (SPEC section 8)."""
    buckets = stats.queued + stats.delivered + stats.filtered + stats.dropped
    assert stats.tracked == buckets, stats
