"""Tracking from a Flask view: one client per process, created at import, never in the view.

    pip install flask
    CCA_ENDPOINT=https://api.yourapp.com/analytics flask --app examples/flask_view.py run

``track()`` only queues: the view's response time does not depend on the
analytics endpoint. The client flushes itself at interpreter exit.
"""

from __future__ import annotations

import os

from flask import Flask, jsonify, request, session

import campaign_cart_analytics as cca

app = Flask(__name__)
app.secret_key = os.environ.get("FLASK_SECRET_KEY", "dev-only")
analytics = cca.Analytics(
    os.environ.get("CCA_ENDPOINT", "http://127.0.0.1:8000/analytics"),
    headers={"Authorization": f"Bearer {os.environ.get('CCA_TOKEN', '')}"},
)


@app.post("/cart/items")
def add_to_cart():  # type: ignore[no-untyped-def]
    item = request.get_json(force=True)
    session.setdefault("cart", []).append(item)
    session.modified = True
    analytics.track(
        "dl_add_to_cart",
        {
            "ecommerce": {
                "items": [item],
                "value": item["price"] * item.get("quantity", 1),
                "currency": "USD",
            },
            "user_properties": {"session_id": session.get("sid", "anonymous")},
            "attribution": {
                key[4:]: value for key, value in request.args.items() if key.startswith("utm_")
            },
        },
    )
    return jsonify(cart_size=len(session["cart"])), 201
