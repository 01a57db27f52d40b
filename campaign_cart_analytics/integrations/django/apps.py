"""The Django app: configures the module-level client from ``settings.CAMPAIGN_CART_ANALYTICS``."""

from __future__ import annotations

from collections.abc import Mapping

from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

import campaign_cart_analytics as cca


class CampaignCartAnalyticsConfig(AppConfig):
    name = "campaign_cart_analytics.integrations.django"
    label = "campaign_cart_analytics"
    verbose_name = "Campaign Cart analytics"

    def ready(self) -> None:
        options = getattr(settings, "CAMPAIGN_CART_ANALYTICS", None)
        if not isinstance(options, Mapping):
            raise ImproperlyConfigured(
                "settings.CAMPAIGN_CART_ANALYTICS must be a dict of options, e.g. "
                "{'endpoint': 'https://api.yourapp.com/analytics', 'batchSize': 10}"
            )
        try:
            cca.configure(**options)
        except cca.ConfigError as exc:
            raise ImproperlyConfigured(f"settings.CAMPAIGN_CART_ANALYTICS: {exc}") from exc
