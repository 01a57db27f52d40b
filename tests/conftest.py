from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from receiver import Receiver

import campaign_cart_analytics as cca


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def make_client(receiver: Receiver) -> Iterator[object]:
    """Build clients aimed at the receiver; each is shut down (briefly) after the test."""
    clients: list[cca.Analytics] = []

    def make(**options: object) -> cca.Analytics:
        options.setdefault("endpoint", receiver.url)
        client = cca.Analytics(**options)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.shutdown(timeout=1)


@pytest.fixture
def sdk_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog
