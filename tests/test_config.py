"""Options: defaults, rules, both spellings, and what errors and reprs show (SPEC section 2)."""

from __future__ import annotations

import re
from typing import Any

import pytest

import campaign_cart_analytics as cca

URL = "https://api.example.com/analytics"


def test_defaults_match_the_spec() -> None:
    config = cca.Analytics(URL).config
    assert (
        config.batch_size,
        config.batch_interval_ms,
        config.max_retries,
        config.retry_delay_ms,
        config.request_timeout_ms,
        config.max_queue_size,
        config.shutdown_timeout_ms,
    ) == (10, 5000, 3, 1000, 10000, 10000, 5000)
    assert dict(config.headers) == {}
    assert config.transform_function is None and config.on_error is None
    assert config.enabled is True


@pytest.mark.parametrize(
    ("option", "value", "rule"),
    [
        ("batch_size", 0, "an int from 1 to 100"),
        ("batch_size", 101, "an int from 1 to 100"),
        ("batch_size", "10", "an int from 1 to 100"),
        ("batch_size", True, "an int from 1 to 100"),
        ("batch_size", 10.0, "an int from 1 to 100"),
        ("batch_interval_ms", 0, "an int from 1 to 86400000"),
        ("batch_interval_ms", 10**30, "an int from 1 to 86400000"),
        ("max_retries", -1, "an int from 0 to 1000"),
        ("max_retries", False, "an int from 0 to 1000"),
        ("retry_delay_ms", 0, "an int from 1 to 60000"),
        ("request_timeout_ms", 0, "an int from 1 to 3600000"),
        ("shutdown_timeout_ms", -5, "an int from 0 to 3600000"),
        ("max_queue_size", 0, "an int from 1 to 100000000"),
        ("max_queue_size", 10**40, "an int from 1 to 100000000"),
        ("enabled", 1, "a bool"),
        ("transform_function", "upper", "a callable or None"),
        ("on_error", 42, "a callable or None"),
    ],
)
def test_a_bad_value_names_option_value_and_rule(option: str, value: Any, rule: str) -> None:
    with pytest.raises(cca.ConfigError) as caught:
        cca.Analytics(URL, **{option: value})
    message = str(caught.value)
    assert message.startswith(option)
    assert rule in message
    assert repr(value) in message


def test_config_error_is_a_value_error_and_names_the_seed_spelling() -> None:
    with pytest.raises(ValueError, match=r"batch_size \(batchSize\) must be"):
        cca.Analytics(URL, batch_size=0)


def test_max_queue_size_must_hold_a_batch() -> None:
    with pytest.raises(cca.ConfigError, match=r"max_queue_size .* must be >= batch_size"):
        cca.Analytics(URL, batch_size=50, max_queue_size=10)


@pytest.mark.parametrize(
    "endpoint",
    ["", "api.example.com/analytics", "ftp://example.com/x", "http://", "/analytics", 42, None],
)
def test_endpoint_must_be_an_absolute_http_url(endpoint: Any) -> None:
    with pytest.raises(cca.ConfigError, match="endpoint must be an absolute http:// or https://"):
        cca.Analytics(endpoint)


def test_endpoint_error_hides_credentials() -> None:
    with pytest.raises(cca.ConfigError) as caught:
        cca.Analytics("ftp://user:hunter2@example.com/x?key=abc")
    assert "hunter2" not in str(caught.value)
    assert "abc" not in str(caught.value)


def test_header_rules_never_show_the_value() -> None:
    with pytest.raises(cca.ConfigError, match=r"headers\['Authorization'\] must be a str") as c:
        cca.Analytics(URL, headers={"Authorization": 12345})
    assert "12345" not in str(c.value)
    with pytest.raises(cca.ConfigError, match="CR, LF, NUL") as c:
        cca.Analytics(URL, headers={"Authorization": "Bearer s3cret\r\nX-Evil: 1"})
    assert "s3cret" not in str(c.value)
    with pytest.raises(cca.ConfigError, match="not a valid HTTP header name"):
        cca.Analytics(URL, headers={"Bad Name": "x"})
    with pytest.raises(cca.ConfigError, match="headers must be a mapping"):
        cca.Analytics(URL, headers=[("Authorization", "x")])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "suggested"),
    [("batchsize", "batchSize"), ("batch_sise", "batch_size"), ("retryDelay", "retryDelayMs")],
)
def test_unknown_option_suggests_the_close_spelling(given: str, suggested: str) -> None:
    with pytest.raises(
        cca.ConfigError, match=f"unknown option '{given}'; did you mean '{suggested}'"
    ):
        cca.Analytics.from_settings({"endpoint": URL, given: 5})


def test_unknown_keyword_argument_is_a_config_error_too() -> None:
    with pytest.raises(cca.ConfigError, match="did you mean 'batch_size'"):
        cca.Analytics(URL, batchsize=5)  # type: ignore[call-arg]
    with pytest.raises(cca.ConfigError, match="the options are: endpoint, headers"):
        cca.Analytics(URL, colour="blue")  # type: ignore[call-arg]


def test_from_settings_takes_both_spellings() -> None:
    transform = lambda event: event  # noqa: E731
    client = cca.Analytics.from_settings(
        {
            "endpoint": URL,
            "batchSize": 50,
            "batchIntervalMs": 100,
            "maxRetries": 0,
            "retryDelayMs": 10,
            "requestTimeoutMs": 500,
            "maxQueueSize": 60,
            "shutdownTimeoutMs": 0,
            "transformFunction": transform,
            "headers": {"X-Store-ID": "store-123"},
            "enabled": False,
        }
    )
    config = client.config
    assert (config.batch_size, config.batch_interval_ms, config.max_retries) == (50, 100, 0)
    assert (config.retry_delay_ms, config.request_timeout_ms, config.max_queue_size) == (
        10,
        500,
        60,
    )
    assert config.shutdown_timeout_ms == 0 and config.transform_function is transform
    assert cca.Analytics.from_settings({"endpoint": URL, "batch_size": 7}).config.batch_size == 7


def test_from_settings_rejects_the_same_option_twice_and_a_missing_endpoint() -> None:
    with pytest.raises(cca.ConfigError, match="given twice"):
        cca.Analytics.from_settings({"endpoint": URL, "batchSize": 5, "batch_size": 6})
    with pytest.raises(cca.ConfigError, match="endpoint is required"):
        cca.Analytics.from_settings({"batchSize": 5})


def test_use_analytics_takes_the_seed_configuration_shape() -> None:
    on_error = lambda events, error: None  # noqa: E731
    client = cca.use_analytics(
        {
            "providers": {
                "custom": {
                    "enabled": True,
                    "settings": {
                        "endpoint": URL,
                        "headers": {"Authorization": "Bearer YOUR_TOKEN"},
                        "batchSize": 10,
                        "batchIntervalMs": 5000,
                        "maxRetries": 3,
                        "retryDelayMs": 1000,
                        "onError": on_error,
                    },
                }
            }
        }
    )
    assert client.config.enabled is True
    assert client.config.on_error is on_error
    assert dict(client.config.headers) == {"Authorization": "Bearer YOUR_TOKEN"}
    disabled = cca.use_analytics(
        {"providers": {"custom": {"enabled": False, "settings": {"endpoint": URL}}}}
    )
    assert disabled.config.enabled is False


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "providers is missing"),
        ({"providers": {}}, "providers.custom is missing"),
        ({"providers": {"custom": {"enabled": "yes", "settings": {"endpoint": URL}}}}, "enabled"),
        ({"providers": {"custom": {"setings": {}}}}, "unknown: 'setings'"),
        ({"providers": {"custom": {"settings": {"endpoint": URL, "batchsize": 1}}}}, "batchSize"),
    ],
)
def test_use_analytics_explains_a_malformed_shape(config: Any, message: str) -> None:
    with pytest.raises(cca.ConfigError, match=re.escape(message)):
        cca.use_analytics(config)


def test_repr_shows_endpoint_and_options_never_header_values() -> None:
    client = cca.Analytics(
        "https://user:pa55word@api.example.com/analytics?api_key=k3y",
        headers={"X-Api-Key": "Bearer s3cret", "X-Token": lambda: "t0ken"},
        batch_size=25,
        enabled=False,
    )
    text = repr(client)
    assert text.startswith("Analytics(endpoint='https://***@api.example.com/analytics?")
    assert "batch_size=25" in text and "'X-Api-Key': '***'" in text
    for secret in ("s3cret", "t0ken", "pa55word", "k3y"):
        assert secret not in text
