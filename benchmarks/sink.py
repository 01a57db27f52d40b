"""A cheap HTTP/1.1 sink for benchmarks, run in its own process so its CPU is not the SDK's.

    python benchmarks/sink.py [--status 200] [--fail-percent 30] [--count-ids]
                              [--delay-ms 50] [--rate 50]

Prints ``PORT <n>`` and serves 127.0.0.1:<n> over keep-alive connections.
Every POST is answered ``--status`` (or 500, for a seeded random
``--fail-percent`` of requests). Events are counted without parsing, by the
``"event_id"`` (ours) and ``"messageId"`` (Segment's) keys in the body; with
``--count-ids`` accepted bodies are parsed to count distinct ids too.
``--delay-ms`` answers each POST that long after it arrived (a remote
endpoint: connections are served each on its own thread). ``--rate`` is a
rate limiter like nginx ``limit_req`` without ``burst``: one request per
``1/rate`` s gets through, the others are answered 429 (no Retry-After).
``GET`` answers ``{"events": n, "distinct": d, "requests": r, "refused": f,
"refused_after_1s": share}``, the last the share of requests refused once a
second has passed since the first (how well a client has adapted).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import socket
import sys
import threading
import time

_ID = re.compile(rb'"(?:event_id|messageId)":\s*"([^"]*)"')


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events = 0
        self.requests = 0
        self.ids: set[bytes] = set()
        self.arrivals: list[tuple[float, bool]] = []  # (time, refused) of each POST
        self.next_allowed = 0.0  # the rate limiter: when the next request may pass

    def admit(self, rate: float) -> bool:
        """Whether a request arriving now passes a limiter of ``rate`` per second (no burst)."""
        now = time.monotonic()
        with self.lock:
            passes = rate <= 0 or now >= self.next_allowed
            if passes and rate > 0:
                self.next_allowed = now + 1.0 / rate
            self.arrivals.append((now, not passes))
            return passes

    def report(self) -> dict[str, object]:
        with self.lock:
            first = self.arrivals[0][0] if self.arrivals else 0.0
            late = [refused for at, refused in self.arrivals if at >= first + 1.0]
            return {
                "events": self.events,
                "distinct": len(self.ids),
                "requests": self.requests,
                "refused": sum(refused for _, refused in self.arrivals),
                "refused_after_1s": sum(late) / len(late) if late else 0.0,
            }


def reply(status: int, body: bytes = b"") -> bytes:
    head = f"HTTP/1.1 {status} Sink\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def serve_connection(conn: socket.socket, args: argparse.Namespace, counts: Counts) -> None:
    buffer = b""
    chance = random.Random(args.seed)
    with conn:
        while True:
            while b"\r\n\r\n" not in buffer:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buffer) < length:
                chunk = conn.recv(max(65536, length - len(buffer)))
                if not chunk:
                    return
                buffer += chunk
            body, buffer = buffer[:length], buffer[length:]
            if head.startswith(b"GET"):
                conn.sendall(reply(200, json.dumps(counts.report()).encode()))
                continue
            with counts.lock:
                counts.requests += 1
            if args.delay_ms:
                time.sleep(args.delay_ms / 1000)
            if not counts.admit(args.rate):
                conn.sendall(reply(429))
                continue
            if chance.random() * 100 < args.fail_percent:
                conn.sendall(reply(500))
                continue
            found = body.count(b'"event_id"') + body.count(b'"messageId"')
            ids = set(_ID.findall(body)) if args.count_ids else set()
            with counts.lock:
                counts.events += found
                counts.ids |= ids
            conn.sendall(reply(args.status))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--status", type=int, default=200)
    parser.add_argument("--fail-percent", type=float, default=0.0)
    parser.add_argument("--count-ids", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--rate", type=float, default=0.0)
    args = parser.parse_args()
    counts = Counts()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_connection, args=(conn, args, counts), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
