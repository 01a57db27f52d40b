"""Keep the SDK's own requests out of the application's OpenTelemetry traces.

An application instrumented with OpenTelemetry (``opentelemetry-instrument``,
``RequestsInstrumentor``) would otherwise get a span for every batch this SDK
posts. OpenTelemetry's own exporters avoid that by setting the "suppress
instrumentation" keys in the context around their requests; instrumentations
check them. Without ``opentelemetry`` installed this is a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

_context: Any
try:
    import opentelemetry.context as _context
except ImportError:  # pragma: no cover - exercised where opentelemetry is absent
    _context = None


def _suppression_keys() -> list[Any]:
    if _context is None:
        return []
    names = ("_SUPPRESS_INSTRUMENTATION_KEY", "_SUPPRESS_HTTP_INSTRUMENTATION_KEY")
    keys = [getattr(_context, name) for name in names if hasattr(_context, name)]
    # Older instrumentations read the plain names instead of the keys.
    return [*keys, "suppress_instrumentation", "suppress_http_instrumentation"]


_KEYS = _suppression_keys()


@contextlib.contextmanager
def suppressed() -> Iterator[None]:
    """A block in which instrumentations record nothing (when OpenTelemetry is installed)."""
    if not _KEYS or _context is None:
        yield
        return
    values = _context.get_current()
    for key in _KEYS:
        values = _context.set_value(key, True, values)
    token = _context.attach(values)
    try:
        yield
    finally:
        _context.detach(token)
