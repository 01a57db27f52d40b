"""A cheap HTTP/1.1 sink for benchmarks: reads each request, parses nothing it does not need.

Run as its own process so its CPU is not charged to the SDK:
    python benchmarks/sink.py        # prints "PORT <n>", then serves 127.0.0.1:<n>
Answers every request 202 (or the status given as its first argument) with an
empty body, over keep-alive connections.
"""

from __future__ import annotations

import socket
import sys
import threading

STATUS = int(sys.argv[1]) if len(sys.argv) > 1 else 202
REPLY = f"HTTP/1.1 {STATUS} Sink\r\nContent-Length: 0\r\n\r\n".encode()


def serve_connection(conn: socket.socket) -> None:
    buffer = b""
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
            buffer = buffer[length:]
            conn.sendall(REPLY)


def main() -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_connection, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
