"""The examples do what their docstrings promise."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import wait_until
from receiver import Receiver, Reply, free_port, refused_url

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


def test_fastapi_app_under_uvicorn_tracks_and_delivers_at_sigterm(receiver: Receiver) -> None:
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(EXAMPLES), "--port", str(port),
         "fastapi_app:app"],
        env={**os.environ, "CCA_ENDPOINT": receiver.url, "CCA_TOKEN": "t"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as browser:

            def answers() -> bool:
                try:
                    return browser.get("/docs").status_code == 200
                except httpx.HTTPError:
                    return server.poll() is not None

            assert wait_until(answers, timeout=20) and server.poll() is None, (
                "uvicorn did not start"
            )
            added = browser.post(
                "/cart/items?utm_source=google&utm_medium=cpc",
                json={"item_id": "SKU123", "price": 29.99, "quantity": 2},
            )
            assert added.status_code == 201 and added.json() == {
                "item_id": "SKU123",
                "value": 59.98,
            }
            assert receiver.requests == []  # queued, not yet sent: a batch holds 20
            checkout = browser.post("/checkout?order_id=A-1")
            assert checkout.json() == {"order_id": "A-1", "recorded": True}
            assert len(receiver.delivered_events()) == 2  # flushed before it answered
            browser.post("/cart/items", json={"item_id": "SKU9", "price": 5})
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)
    cart, purchase, queued_at_exit = receiver.delivered_in_tracking_order()  # the last at SIGTERM
    assert cart["event"] == "dl_add_to_cart" and cart["ecommerce"]["value"] == 59.98
    assert cart["attribution"] == {"source": "google", "medium": "cpc"}
    assert purchase["ecommerce"]["transaction_id"] == "A-1" and "attribution" not in purchase
    assert queued_at_exit["ecommerce"]["items"][0]["item_id"] == "SKU9"
    session_id = cart["user_properties"]["session_id"]
    assert len(session_id) == 32 and added.cookies["cca_session_id"] == session_id
    assert (
        purchase["user_properties"]
        == queued_at_exit["user_properties"]
        == {"session_id": session_id}
    )
    assert receiver.requests[0].headers["authorization"] == "Bearer t"
    assert "Traceback" not in stderr
