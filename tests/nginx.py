"""nginx in front of a test receiver: a rate limiter and a body cap, as users deploy them.

``Nginx(upstream_port, rate=20)`` writes a configuration into a temporary
folder, starts ``nginx -g 'daemon off;'`` on a free loopback port and stops it
by its PID. Requests beyond ``rate`` per second (no burst) are answered 429;
bodies over ``max_body`` are answered 413. Tests skip, saying why, where the
nginx binary cannot be had (``.ci/run`` installs Debian's ``nginx-light``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

import pytest
from receiver import free_port

_CONFIG = """
worker_processes 1;
{user}
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    limit_req_zone $server_name zone=everyone:1m rate={rate}r/s;
    limit_req_status 429;
    upstream receiver {{ server 127.0.0.1:{upstream}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port};
        server_name limited;
        client_max_body_size {max_body};
        location / {{
            {limit}
            proxy_pass http://receiver;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def nginx_binary() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("nginx is not installed (apt-get install nginx-light); .ci/run installs it")


class Nginx:
    def __init__(self, upstream_port: int, *, rate: Optional[int] = 20, max_body: str = "1m"):
        binary = nginx_binary()
        self.folder = Path(tempfile.mkdtemp(prefix="cca-nginx-"))
        os.chmod(self.folder, 0o755)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/analytics"
        config = _CONFIG.format(
            folder=self.folder,
            user="user root;" if os.geteuid() == 0 else "",
            rate=rate or 1,
            limit="limit_req zone=everyone;" if rate else "",
            upstream=upstream_port,
            port=self.port,
            max_body=max_body,
        )
        (self.folder / "nginx.conf").write_text(config)
        self.process = subprocess.Popen(
            [binary, "-p", str(self.folder), "-c", str(self.folder / "nginx.conf"),
             "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self._wait_until_listening()

    def _wait_until_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"nginx exited at start: {error}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("nginx did not start listening in time")

    def refused(self) -> int:
        """How many requests nginx answered 429 so far (from its access log)."""
        log = self.folder / "access.log"
        text = log.read_text() if log.exists() else ""
        return sum(1 for line in text.splitlines() if '" 429 ' in line)

    def requests(self) -> int:
        log = self.folder / "access.log"
        return len(log.read_text().splitlines()) if log.exists() else 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: the log is complete
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.folder, ignore_errors=True)
