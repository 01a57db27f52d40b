"""A Flask shop using the integration: request context, one client per app, gunicorn-ready.

    pip install 'campaign-cart-analytics[flask]' gunicorn
    CCA_ENDPOINT=https://api.yourapp.com/analytics \\
        gunicorn --preload --workers 4 --threads 8 --chdir examples flask_app:app

Every event tracked in a request carries the visitor's session id and the
request's utm_* attribution; the view passes only what it knows. track()
only queues, so the response never waits for the analytics endpoint.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify, request, session

from campaign_cart_analytics.integrations.flask import CampaignCartAnalytics

app = Flask(__name__)
app.secret_key = os.environ.get("FLASK_SECRET_KEY", "dev-only-secret")
app.config["CAMPAIGN_CART_ANALYTICS"] = {
    "endpoint": os.environ.get("CCA_ENDPOINT", "http://127.0.0.1:8000/analytics"),
    "headers": {"Authorization": f"Bearer {os.environ.get('CCA_TOKEN', '')}"},
    "batchSize": 20,
}
analytics = CampaignCartAnalytics(app)


@app.post("/cart/items")
def add_to_cart() -> Any:
    item = request.get_json(force=True)
    cart = session.setdefault("cart", [])
    cart.append(item)
    session.modified = True
    analytics.track(
        "dl_add_to_cart",
        {
            "ecommerce": {
                "items": [item],
                "value": item["price"] * item.get("quantity", 1),
                "currency": "USD",
            }
        },
    )
    return jsonify(cart_size=len(cart)), 201
