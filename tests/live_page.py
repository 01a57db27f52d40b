"""How the live view's tests read the page: its rows, its status, and waits for them.

The waits check on every animation frame (``wait_for_function``), not on Playwright's
``expect`` schedule (100 ms, then 250, 500, 1000): the page polls every 100 ms in the
tests, and each wait would otherwise cost a few hundred milliseconds. Each is given as
a function, not an expression, because the page's CSP forbids ``eval``.
"""

from __future__ import annotations

import json
from typing import Any, Optional

try:
    from playwright.sync_api import Error as PlaywrightError
except ImportError:  # test_live_view skips without playwright; importing this must not fail
    PlaywrightError = Exception  # type: ignore[misc,assignment]

ROWS = "#events > li"


def shown_names(page: Any) -> list[str]:
    return [str(name) for name in page.locator(f"{ROWS} .name").all_text_contents()]


def wait_rows(page: Any, count: int, timeout: Optional[float] = None) -> None:
    """Wait until the list shows ``count`` rows (checked every frame, not every 100+ ms)."""
    try:
        page.wait_for_function(
            "([rows, count]) => document.querySelectorAll(rows).length === count",
            arg=[ROWS, count],
            timeout=timeout,
        )
    except PlaywrightError:
        shown, status = page.locator(ROWS).count(), page.locator("#status").text_content()
        raise AssertionError(f"{shown} rows shown, not {count}; status: {status!r}") from None


def wait_state(page: Any, state: str) -> None:
    page.wait_for_selector(f"#status[data-state={state}]", state="attached")


def wait_text(page: Any, selector: str, text: str) -> None:
    """Wait until the first element ``selector`` matches holds ``text`` (checked every frame)."""
    try:
        page.wait_for_function(
            "([selector, text]) => document.querySelector(selector)?.textContent.includes(text)",
            arg=[selector, text],
        )
    except PlaywrightError:
        shown = page.locator(selector).first.text_content()
        raise AssertionError(f"{selector} holds {shown!r}, without {text!r}") from None


def json_view(row: Any) -> Any:
    """What a row's expandable JSON view shows, opened by a click."""
    row.locator("summary").click()
    row.locator("pre:not(:empty)").wait_for(state="attached")  # filled a task after the click
    return json.loads(row.locator("pre").text_content())


def events_queries(requests: list[Any]) -> list[dict[str, str]]:
    """The query of each ``GET /events`` the page made, in order."""
    queries = []
    for request in list(requests):
        path, _, query = request.url.partition("?")
        if path.endswith("/events"):
            queries.append(dict(pair.split("=", 1) for pair in query.split("&") if pair))
    return queries


def set_hidden(page: Any, hidden: bool) -> None:
    """Hide or show the tab: headless Chromium hides none, so the page is told so."""
    page.evaluate(
        """hidden => {
            Object.defineProperty(document, 'hidden', {configurable: true, get: () => hidden});
            Object.defineProperty(document, 'visibilityState',
                                  {configurable: true, get: () => hidden ? 'hidden' : 'visible'});
            document.dispatchEvent(new Event('visibilitychange'));
        }""",
        hidden,
    )
