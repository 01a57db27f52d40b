"""``OverloadGate`` alone, driven by generated schedules of request starts and answers.

The delivery tests run it against real servers; here Hypothesis looks for a schedule that
breaks its bounds: the pace never below half a request a second (a flush after a run of
429s waits two seconds at most for its turn), the concurrency limit between 1 and the
maximum, and no start allowed before ``now``.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from campaign_cart_analytics.overload import OverloadGate

WAITS = st.sampled_from([0.0, 0.001, 0.01, 0.1, 0.3, 0.6, 0.99, 1.0, 1.5, 3.0])
STEPS = st.lists(
    st.tuples(st.sampled_from(["start", "2xx", "429"]), WAITS, st.sampled_from([0.0, 0.05, 2.0])),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(max_concurrent=st.integers(1, 16), steps=STEPS)
def test_the_pace_and_the_limit_stay_within_their_bounds(
    max_concurrent: int, steps: list[tuple[str, float, float]]
) -> None:
    gate = OverloadGate(max_concurrent)
    now, in_flight = 0.0, []
    for action, wait, pause in steps:
        now += wait
        if action == "start":
            opens = gate.opens_at(len(in_flight), now)
            if opens is None:
                continue
            assert opens >= now
            now = opens
            gate.started(now)
            in_flight.append(now)
        elif in_flight:
            started_at = in_flight.pop(0)
            if action == "2xx":
                gate.succeeded(started_at)
            else:
                gate.overloaded(now, pause, started_at)
        assert gate.pace is None or gate.pace >= 0.5, steps
        assert 1 <= gate.limit <= max_concurrent


def test_a_success_after_a_run_of_overloads_brings_the_pace_back_by_a_request_a_second() -> None:
    gate = OverloadGate(4)
    now = 0.0
    for _ in range(20):  # a burst, refused: paced at half the rate it measured
        gate.started(now)
        now += 0.01
    gate.overloaded(now, 0.0, now - 0.01)
    for _ in range(10):  # each refused again, as early as the pace lets them go
        opens = gate.opens_at(0, now)
        assert opens is not None
        now = opens
        gate.started(now)
        gate.overloaded(now + 0.001, 0.0, now)
    slowest = gate.pace
    assert slowest is not None and slowest >= 0.5
    opens = gate.opens_at(0, now)
    assert opens is not None and opens - now <= 2.0
    gate.succeeded(opens)
    assert gate.pace == slowest + 1.0
