"""A Flask app for the gunicorn test: the client is made at import, in the preloading master."""

from __future__ import annotations

import os
import time

from flask import Flask, request

import campaign_cart_analytics as cca

analytics = cca.Analytics(os.environ["CCA_ENDPOINT"], batch_interval_ms=60_000)
analytics.track("app_booted", {"user_properties": {"session_id": "shared"}})  # master's thread

app = Flask(__name__)


@app.get("/buy")
def buy() -> str:
    analytics.track(
        "dl_purchase",
        {"request": int(request.args["n"]), "user_properties": {"session_id": "shared"}},
    )
    time.sleep(0.02)  # keep a worker busy so concurrent requests spread over both
    return str(os.getpid())
