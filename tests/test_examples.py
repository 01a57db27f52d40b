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


def test_flask_app_tracks_with_the_request_context(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CCA_ENDPOINT", receiver.url)
    spec = importlib.util.spec_from_file_location("flask_app_example", EXAMPLES / "flask_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    client = module.app.extensions["campaign_cart_analytics"]
    try:
        response = module.app.test_client().post(
            "/cart/items?utm_source=google&utm_medium=cpc",
            json={"item_id": "SKU123", "price": 29.99, "quantity": 2},
        )
        assert response.status_code == 201 and response.get_json() == {"cart_size": 1}
        assert client.flush(timeout=5)
        (event,) = receiver.delivered_events()
        assert event["event"] == "dl_add_to_cart"
        assert event["ecommerce"]["value"] == 59.98
        assert event["attribution"] == {"source": "google", "medium": "cpc"}
        assert len(event["user_properties"]["session_id"]) == 32
    finally:
        client.shutdown(timeout=1)


def test_django_project_tracks_through_the_middleware(receiver: Receiver, tmp_path: Path) -> None:
    project = EXAMPLES / "django_project"
    script = (
        "import django, json; django.setup()\n"
        "from django.core.management import call_command; call_command('migrate', verbosity=0)\n"
        "from django.test import Client\n"
        "r = Client().get('/cart/add/SKU123?utm_source=google&utm_campaign=summer_sale')\n"
        "assert r.status_code == 200, r.status_code\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "shop.settings",
            "CCA_ENDPOINT": receiver.url,
            "SHOP_DATABASE": str(tmp_path / "shop.sqlite3"),
            "PYTHONPATH": str(project),
        },
    )
    assert result.returncode == 0, result.stderr
    (event,) = receiver.delivered_events()  # delivered by the exit-time flush
    assert event["event"] == "dl_add_to_cart" and event["ecommerce"]["value"] == 29.99
    assert event["attribution"] == {"source": "google", "campaign": "summer_sale"}
    assert event["user_properties"]["session_id"]
