"""Client options: their defaults, their rules, and both spellings of their names.

Every option of ``Analytics(...)`` lives in the frozen ``Config`` below, with
the validator that guards it beside the field. A bad value raises
``ConfigError`` at construction, naming the option in both spellings, the bad
value (never for headers) and the rule. Types are never coerced: ``"10"`` is
not a batch size and ``True`` is not an int.

The browser SDK's camelCase names (``batchSize``, ``retryDelayMs``, ...) are
accepted by ``normalize_settings`` so one settings file can serve both SDKs.
"""

from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Mapping
from typing import Any, Callable, Optional, Union

import attrs
import requests.utils as requests_utils

from .errors import ConfigError
from .urls import redact_url, shown_url, url_problem

HeaderValue = Union[str, Callable[[], str]]
TransformFunction = Callable[[dict[str, Any]], Optional[dict[str, Any]]]
ErrorCallback = Callable[[list[dict[str, Any]], BaseException], None]

#: The wire format caps a batch at 100 events.
MAX_BATCH_SIZE = 100

# Generous upper bounds for the times: they catch a unit mistake (seconds given as
# microseconds) and keep every value a float can hold.
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

#: The smallest spool_max_bytes: a few pages of SQLite beyond its empty schema.
MIN_SPOOL_BYTES = 64 * 1024

#: Our option name -> the browser SDK's name for it.
SEED_NAMES: Mapping[str, str] = types.MappingProxyType(
    {
        "endpoint": "endpoint",
        "headers": "headers",
        "batch_size": "batchSize",
        "batch_interval_ms": "batchIntervalMs",
        "max_retries": "maxRetries",
        "retry_delay_ms": "retryDelayMs",
        "transform_function": "transformFunction",
        "request_timeout_ms": "requestTimeoutMs",
        "max_queue_size": "maxQueueSize",
        "shutdown_timeout_ms": "shutdownTimeoutMs",
        "enabled": "enabled",
        "on_error": "onError",
        "verify": "verify",
        "max_concurrent_requests": "maxConcurrentRequests",
        "compression": "compression",
        "client_cert": "clientCert",
        "proxy": "proxy",
        "spool_path": "spoolPath",
        "spool_sync": "spoolSync",
        "spool_max_bytes": "spoolMaxBytes",
        "spool_max_pause_ms": "spoolMaxPauseMs",
    }
)
_BY_ANY_NAME = {**{seed: ours for ours, seed in SEED_NAMES.items()}, **{o: o for o in SEED_NAMES}}

# RFC 9110 token characters for names. A value is visible ASCII, spaces and tabs, or
# Latin-1 "obs-text" (what http.client can encode): no control character (CR and LF
# would inject headers), nothing beyond U+00FF, no leading white space (requests refuses it).
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HEADER_VALUE = re.compile(r"^(?:[\x21-\x7e\x80-\xff][\t\x20-\x7e\x80-\xff]*)?$")


def option_label(name: str) -> str:
    """``batch_size (batchSize)``: an option in both spellings, for messages."""
    seed = SEED_NAMES.get(name, name)
    return name if seed == name else f"{name} ({seed})"


def check_header_value(name: str, value: object) -> str:
    """Return ``value`` if it can be sent as header ``name``; the error never shows it."""
    if not isinstance(value, str):
        raise ConfigError(
            f"headers[{name!r}] must be a str (or a callable returning str); "
            f"got {type(value).__name__}"
        )
    if not _HEADER_VALUE.fullmatch(value):  # not match: $ also matches before a final LF
        raise ConfigError(
            f"headers[{name!r}] may hold only visible ASCII (or Latin-1) characters, with "
            "spaces and tabs between them: no CR, LF, NUL or other control character, no "
            "character beyond U+00FF, no white space at the start (the value is not shown "
            "because headers carry secrets)"
        )
    return value


def _rule_error(name: str, value: object, rule: str) -> ConfigError:
    return ConfigError(f"{option_label(name)} must be {rule}; got {_shown(value)}")


# Shown back in an error: numbers, bools, None and short plain strings ('10', 'True').
# Anything else could hold a token or a URL with credentials put under the wrong
# option (a headers dict, say), and is described by its type instead.
_PLAIN = re.compile(r"^[\w.+-]{0,16}$")


def _shown(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**100:
        return f"an int of {value.bit_length()} bits"  # repr() of a huge int can raise
    if value is None or isinstance(value, (bool, int, float)):
        return f"{value!r} ({type(value).__name__})"
    if isinstance(value, str):
        if _PLAIN.fullmatch(value):
            return f"{value!r} (str)"
        return f"a str of {len(value)} characters (not shown: it may be a secret)"
    return f"a {type(value).__name__} (not shown: it may hold a secret)"


_PLAIN_PATH = re.compile(r"[\w./ ~+-]{1,200}")


def _shown_path(path: str) -> str:
    """A path for an error message, unless it looks like something else (a URL, a token)."""
    return repr(path) if _PLAIN_PATH.fullmatch(path) else f"a path of {len(path)} characters"


def _int_option(minimum: int, maximum: Optional[int] = None) -> Callable[[Any, Any, Any], None]:
    rule = f"an int from {minimum} to {maximum}" if maximum is not None else f"an int >= {minimum}"

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        out_of_range = (
            isinstance(value, int)
            and not isinstance(value, bool)
            and (value < minimum or (maximum is not None and value > maximum))
        )
        if not isinstance(value, int) or isinstance(value, bool) or out_of_range:
            raise _rule_error(attribute.name, value, rule)

    return check


def _optional_callable(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not callable(value):
        raise _rule_error(attribute.name, value, "a callable or None")


def _bool_option(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise _rule_error(attribute.name, value, "a bool (True or False)")


def _check_endpoint(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str):
        raise _rule_error("endpoint", value, _ENDPOINT_RULE)
    _check_url("endpoint", _ENDPOINT_RULE, value)


_ENDPOINT_RULE = "an absolute http:// or https:// URL with a host"


def _check_url(option: str, rule: str, url: str) -> None:
    problem = url_problem(url)
    if problem is not None:
        raise ConfigError(f"{option} must be {rule}; got {shown_url(url)!r}: {problem}")


def _check_verify(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool):
        return
    rule = "True, False, or the path of a CA bundle file or folder"
    if not isinstance(value, str):
        raise _rule_error("verify", value, rule)
    if not os.path.exists(value):
        raise ConfigError(
            f"verify must be {rule}; got {_shown_path(value)}: no such file or folder"
        )


def _check_client_cert(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
    rule = "None, the path of a PEM file, or a (cert, key) pair of paths"
    paths = (value,) if isinstance(value, str) else value
    if value is None:
        return
    if not isinstance(paths, tuple) or not 1 <= len(paths) <= 2:
        raise _rule_error("client_cert", value, rule)
    for path in paths:
        if not isinstance(path, str):
            raise _rule_error("client_cert", value, rule)
        if not os.path.isfile(path):
            raise ConfigError(
                f"{option_label('client_cert')} must be {rule}; got {_shown_path(path)}: "
                "no such file"
            )


def _tuple_if_list(value: Any) -> Any:
    value = tuple(value) if isinstance(value, list) else value  # JSON settings have no tuples
    if isinstance(value, tuple):
        return tuple(_absolute_path(path) for path in value)
    return _absolute_path(value)


def _absolute_path(value: Any) -> Any:
    """A path as it is now: a later os.chdir() must not change what a file option names."""
    return os.path.abspath(value) if isinstance(value, str) and value else value


def _check_proxy(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
    rule = "None or an http:// or https:// proxy URL with a host"
    if value is None:
        return
    if not isinstance(value, str):
        raise _rule_error("proxy", value, rule)
    _check_url("proxy", rule, value)


def _check_compression(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value != "gzip":
        raise _rule_error("compression", value, "None or 'gzip'")


def _spool_path(value: Any) -> Any:
    """A path-like as an absolute str; anything else is left for the validator to refuse."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return _absolute_path(value)


def _check_spool_path(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
    rule = "None or the path of a file in an existing folder (the durable spool)"
    if value is None:
        return
    if not isinstance(value, str) or not value or "\x00" in value:
        raise _rule_error("spool_path", value, rule)
    if os.path.isdir(value):
        raise ConfigError(
            f"{option_label('spool_path')} must be {rule}; got {_shown_path(value)}: a folder"
        )
    if not os.path.isdir(os.path.dirname(value)):
        raise ConfigError(
            f"{option_label('spool_path')} must be {rule}; got {_shown_path(value)}: "
            "its folder does not exist"
        )


def _check_spool_sync(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in ("normal", "full"):
        raise _rule_error("spool_sync", value, "'normal' or 'full'")


def _freeze_headers(value: Any) -> Mapping[str, HeaderValue]:
    if not isinstance(value, Mapping):
        raise ConfigError(
            "headers must be a mapping of header name to str or zero-argument callable; "
            f"got {type(value).__name__}"
        )
    frozen: dict[str, HeaderValue] = {}
    for name, header_value in value.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ConfigError(f"headers: {name!r} is not a valid HTTP header name")
        frozen[name] = (
            header_value if callable(header_value) else check_header_value(name, header_value)
        )
    return types.MappingProxyType(frozen)


def _proxy_repr(url: Optional[str]) -> str:
    return repr(None if url is None else redact_url(url))


def _headers_repr(headers: Mapping[str, HeaderValue]) -> str:
    return "{" + ", ".join(f"{name!r}: '***'" for name in headers) + "}"


@attrs.frozen
class Config:
    """Validated, immutable client options (``Analytics`` builds one from its arguments)."""

    endpoint: str = attrs.field(validator=_check_endpoint, repr=lambda url: repr(redact_url(url)))
    headers: Mapping[str, HeaderValue] = attrs.field(
        factory=dict, converter=_freeze_headers, repr=_headers_repr
    )
    batch_size: int = attrs.field(default=10, validator=_int_option(1, MAX_BATCH_SIZE))
    batch_interval_ms: int = attrs.field(default=5000, validator=_int_option(1, DAY_MS))
    max_retries: int = attrs.field(default=3, validator=_int_option(0, 1000))
    retry_delay_ms: int = attrs.field(default=1000, validator=_int_option(1, 60_000))
    transform_function: Optional[TransformFunction] = attrs.field(
        default=None, validator=_optional_callable
    )
    request_timeout_ms: int = attrs.field(default=10000, validator=_int_option(1, HOUR_MS))
    max_queue_size: int = attrs.field(default=10000, validator=_int_option(1, 10**8))
    shutdown_timeout_ms: int = attrs.field(default=5000, validator=_int_option(0, HOUR_MS))
    enabled: bool = attrs.field(default=True, validator=_bool_option)
    on_error: Optional[ErrorCallback] = attrs.field(default=None, validator=_optional_callable)
    verify: Union[bool, str] = attrs.field(
        default=True, converter=_absolute_path, validator=_check_verify
    )
    max_concurrent_requests: int = attrs.field(default=4, validator=_int_option(1, 64))
    compression: Optional[str] = attrs.field(default=None, validator=_check_compression)
    client_cert: Union[str, tuple[str, str], None] = attrs.field(
        default=None, converter=_tuple_if_list, validator=_check_client_cert
    )
    proxy: Optional[str] = attrs.field(default=None, validator=_check_proxy, repr=_proxy_repr)
    spool_path: Optional[str] = attrs.field(
        default=None, converter=_spool_path, validator=_check_spool_path
    )
    spool_sync: str = attrs.field(default="normal", validator=_check_spool_sync)
    spool_max_bytes: int = attrs.field(
        default=256 * 2**20, validator=_int_option(MIN_SPOOL_BYTES, 2**40)
    )
    spool_max_pause_ms: int = attrs.field(default=300_000, validator=_int_option(1, DAY_MS))

    def __attrs_post_init__(self) -> None:
        if self.max_queue_size < self.batch_size:
            raise ConfigError(
                f"{option_label('max_queue_size')} must be >= {option_label('batch_size')}; "
                f"got {self.max_queue_size} < {self.batch_size}"
            )
        if self.sets_authorization and any(requests_utils.get_auth_from_url(self.endpoint)):
            # requests would send Basic auth from the URL in place of the header, unsaid
            raise ConfigError(
                "endpoint has credentials (user:password@) and headers has Authorization: "
                "both set the Authorization header; keep one"
            )

    @property
    def sets_authorization(self) -> bool:
        """True when ``headers`` sets Authorization: it wins over a .netrc entry."""
        return any(name.lower() == "authorization" for name in self.headers)


def normalize_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Options keyed by our names, from a mapping in either spelling (``batchSize``)."""
    if not isinstance(settings, Mapping):
        raise ConfigError(f"settings must be a mapping; got {type(settings).__name__}")
    options: dict[str, Any] = {}
    for key, value in settings.items():
        name = _BY_ANY_NAME.get(key) if isinstance(key, str) else None
        if name is None:
            raise unknown_option(key)
        if name in options:
            raise ConfigError(f"{option_label(name)} is given twice, once in each spelling")
        options[name] = value
    if "endpoint" not in options:
        raise ConfigError("endpoint is required: the URL your events are POSTed to")
    return options


def unknown_option(key: object, *, keyword: bool = False) -> ConfigError:
    """The error for an option nobody knows, with the closest real name when there is one.

    The suggestion is in the user's style: snake_case for a keyword argument or
    a key with "_", camelCase for a settings key without one.
    """
    if not isinstance(key, str):
        return ConfigError(f"option names must be str; got {key!r}")
    candidates = {name.lower(): name for name in _BY_ANY_NAME}
    match = difflib.get_close_matches(key.lower(), list(candidates), n=1, cutoff=0.6)
    message = f"unknown option {key!r}"
    if match:
        suggestion = candidates[match[0]]
        ours = _BY_ANY_NAME[suggestion]
        suggestion = ours if keyword or "_" in key else SEED_NAMES[ours]
        message += f"; did you mean {suggestion!r}?"
    else:
        message += f"; the options are: {', '.join(SEED_NAMES)}"
    return ConfigError(message)


def settings_from_providers(config: Mapping[str, Any]) -> dict[str, Any]:
    """Unwrap the browser SDK's ``{"providers": {"custom": {"enabled", "settings"}}}`` shape."""
    where = "providers"
    try:
        providers = config["providers"]
        where = "providers.custom"
        custom = providers["custom"]
    except (KeyError, TypeError):
        raise ConfigError(
            f"{where} is missing: expected {{'providers': {{'custom': "
            "{'enabled': True, 'settings': {'endpoint': ...}}}}}"
        ) from None
    if not isinstance(custom, Mapping):
        raise ConfigError(f"providers.custom must be a mapping; got {type(custom).__name__}")
    extra = set(custom) - {"enabled", "settings"}
    if extra:
        raise ConfigError(
            "providers.custom takes 'enabled' and 'settings'; unknown: "
            + ", ".join(map(repr, sorted(extra, key=str)))
        )
    settings = custom.get("settings", {})
    if not isinstance(settings, Mapping):
        raise ConfigError(
            f"providers.custom.settings must be a mapping; got {type(settings).__name__}"
        )
    merged = dict(settings)
    if "enabled" in custom:
        enabled = custom["enabled"]
        if not isinstance(enabled, bool):
            raise ConfigError(f"providers.custom.enabled must be a bool; got {enabled!r}")
        merged["enabled"] = enabled and merged.get("enabled", True)
    return merged
