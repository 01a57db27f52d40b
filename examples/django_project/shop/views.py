"""A view that tracks: session, user and utm attribution come from the middleware."""

from decimal import Decimal

from django.http import HttpRequest, JsonResponse

import campaign_cart_analytics as cca

PRICES = {"SKU123": Decimal("29.99"), "SKU456": Decimal("99.00")}


def add_to_cart(request: HttpRequest, sku: str) -> JsonResponse:
    request.session["cart"] = [*request.session.get("cart", []), sku]
    price = PRICES.get(sku, Decimal("0"))
    cca.track(
        "dl_add_to_cart",
        {
            "ecommerce": {
                "items": [{"item_id": sku, "price": price, "quantity": 1}],
                "value": price,
                "currency": "USD",
            }
        },
    )
    return JsonResponse({"cart": request.session["cart"]})
