"""A cheap HTTP/1.1 sink for benchmarks, run in its own process so its CPU is not the SDK's.

    python benchmarks/sink.py [--status 200] [--fail-percent 30] [--count-ids]

Prints ``PORT <n>`` and serves 127.0.0.1:<n> over keep-alive connections.
Every POST is answered ``--status`` (or 500, for a seeded random
``--fail-percent`` of requests). Events are counted without parsing, by the
``"event_id"`` (ours) and ``"messageId"`` (Segment's) keys in the body; with
``--count-ids`` accepted bodies are parsed to count distinct ids too.
``GET`` answers ``{"events": n, "distinct": d, "requests": r}``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import socket
import sys
import threading

_ID = re.compile(rb'"(?:event_id|messageId)":\s*"([^"]*)"')


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events = 0
        self.requests = 0
        self.ids: set[bytes] = set()


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
                with counts.lock:
                    report = {"events": counts.events, "distinct": len(counts.ids),
                              "requests": counts.requests}  # fmt: skip
                conn.sendall(reply(200, json.dumps(report).encode()))
                continue
            with counts.lock:
                counts.requests += 1
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
    args = parser.parse_args()
    counts = Counts()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_connection, args=(conn, args, counts), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
