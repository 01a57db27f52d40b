"""Settings of the example shop: the parts that matter for analytics are marked."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-secret")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "shop.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "campaign_cart_analytics.integrations.django",  # analytics: configures cca from below
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "campaign_cart_analytics.integrations.django.AnalyticsMiddleware",  # analytics: after auth
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SHOP_DATABASE", str(BASE_DIR / "db.sqlite3")),
    }
}

# analytics: the browser SDK's option names work here too.
CAMPAIGN_CART_ANALYTICS = {
    "endpoint": os.environ.get("CCA_ENDPOINT", "http://127.0.0.1:8000/analytics"),
    "headers": {"Authorization": f"Bearer {os.environ.get('CCA_TOKEN', '')}"},
    "batchSize": 20,
    "batchIntervalMs": 5000,
}
