"""The examples do what their docstrings promise."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from receiver import Receiver, Reply, refused_url

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(name: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
    )


def test_quickstart_sends_a_session_to_its_own_receiver() -> None:
    result = run_example("quickstart.py")
    assert result.returncode == 0, result.stderr
    for name in ("dl_view_item", "dl_add_to_cart", "dl_purchase"):
        assert name in result.stdout
    assert "delivered=3" in result.stdout and "True" in result.stdout


def test_cron_job_exits_zero_when_everything_was_delivered(receiver: Receiver) -> None:
    result = run_example("cron_job.py", CCA_ENDPOINT=receiver.url, CCA_TOKEN="t")
    assert result.returncode == 0, result.stderr
    assert "25 events delivered" in result.stdout
    assert len(receiver.delivered_events()) == 25


@pytest.mark.parametrize("down", ["refused", "rejected"])
def test_cron_job_exits_nonzero_when_events_were_lost(receiver: Receiver, down: str) -> None:
    receiver.respond = lambda request: Reply(401, body=b"bad token")
    url = refused_url() if down == "refused" else receiver.url
    result = run_example("cron_job.py", CCA_ENDPOINT=url, CCA_RETRY_DELAY_MS="10")
    assert result.returncode == 1
    assert "25 events not delivered" in result.stderr


def test_flask_view_tracks_without_waiting_for_the_endpoint(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CCA_ENDPOINT", receiver.url)
    spec = importlib.util.spec_from_file_location("flask_view_example", EXAMPLES / "flask_view.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        client = module.app.test_client()
        response = client.post(
            "/cart/items?utm_source=google&utm_medium=cpc",
            json={"item_id": "SKU123", "price": 29.99, "quantity": 2},
        )
        assert response.status_code == 201 and response.get_json() == {"cart_size": 1}
        assert module.analytics.flush(timeout=5)
        (event,) = receiver.delivered_events()
        assert event["event"] == "dl_add_to_cart"
        assert event["ecommerce"]["value"] == 59.98
        assert event["attribution"] == {"source": "google", "medium": "cpc"}
    finally:
        module.analytics.shutdown(timeout=1)
