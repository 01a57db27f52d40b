"""Events the reference receiver stores per second, fed by 4 SDK processes.

    python benchmarks/receiver_throughput.py [--events 20000] [--runs 1] [--postgres URL]
        [--setups sqlite,postgres-1,postgres-2,postgres-4]

Setups: ``sqlite`` is ``receive`` in one process (threaded server, one SQLite
file); ``postgres-N`` is ``receive --workers N`` (gunicorn, 4 threads and 4
connections per worker). Without ``--postgres`` a PostgreSQL server is made
for the run (Debian's binaries, ``initdb`` in a temporary folder, as
``nobody`` under root) with its default durability: ``fsync`` and
``synchronous_commit`` on, as SQLite syncs its log at each commit too.

Each run: a fresh database, ``receive`` in its own process(es), then 4 sender
processes each tracking ``--events`` add-to-cart events (batches of 100) as
fast as one thread can, and flushing. Stored events/s is events stored
(``/stats``) divided by the time from the senders' start to the last event
stored. CPU seconds are summed per part (the senders, the receiver's
processes, PostgreSQL's server processes) from ``/proc``, to show which part
the 2 cores were spent on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).parent
SENDERS = 4
TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- a sender process


def send(url: str, events: int) -> None:
    sys.path.insert(0, str(HERE))
    from run import add_to_cart

    import campaign_cart_analytics as cca

    payloads = [add_to_cart(n) for n in range(events)]
    client = cca.Analytics(url, batch_size=100, max_queue_size=events)
    for properties in payloads:
        client.track("dl_add_to_cart", properties)
    delivered = client.flush(timeout=600)
    stats = client.stats()
    client.shutdown(timeout=5)
    print(json.dumps({"delivered": stats.delivered, "dropped": stats.dropped, "ok": delivered}))


# ---------------------------------------------------------------- CPU from /proc


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(child) for child in task.read_text().split()]
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of ``pids`` and of their children already reaped."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / TICKS


# ---------------------------------------------------------------- PostgreSQL


class Postgres:
    """A throw-away durable cluster for the run."""

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not found:
            sys.exit("PostgreSQL's server binaries are not installed (Debian: postgresql)")
        self.bin = found[-1].parent
        self.folder = Path(tempfile.mkdtemp(prefix="cca-bench-pg-"))
        self.user = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
        if self.user is not None:
            os.chown(self.folder, self.user.pw_uid, self.user.pw_gid)
        self.port = 54000 + os.getpid() % 1000
        self._run("initdb", "-D", "data", "-U", "postgres", "--auth=trust", "--no-instructions")
        self._run("pg_ctl", "-D", "data", "-l", "log", "-w", "start", "-o",
                  f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                  "-c max_connections=200")  # fmt: skip
        pid = int((self.folder / "data" / "postmaster.pid").read_text().split()[0])
        self.pid = pid

    def _run(self, tool: str, *args: str) -> None:
        owner = {} if self.user is None else {"user": self.user.pw_uid, "group": self.user.pw_gid}
        subprocess.run([str(self.bin / tool), *args], cwd=self.folder, check=True,
                       capture_output=True, **owner)  # type: ignore[arg-type]  # fmt: skip

    def new_database(self) -> str:
        name = f"bench_{uuid.uuid4().hex[:8]}"
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self._run("pg_ctl", "-D", "data", "-m", "fast", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


# ---------------------------------------------------------------- one measurement


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def measure(
    database: str, workers: int, events: int, postgres_pid: Optional[int]
) -> dict[str, Any]:
    command = [sys.executable, "-m", "campaign_cart_analytics", "receive", "--port", "0",
               "--database", database]  # fmt: skip
    if workers:
        command += ["--workers", str(workers)]
    receiver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)  # fmt: skip
    assert receiver.stdout is not None
    url = receiver.stdout.readline().split()[-1]
    base = url.rsplit("/", 1)[0]
    while get(base + "/healthz").get("status") != "ok":
        time.sleep(0.05)
    receiver_cpu = cpu_seconds(tree(receiver.pid))
    database_cpu = cpu_seconds(tree(postgres_pid)) if postgres_pid else 0.0
    children_before = _children_cpu()
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            [sys.executable, __file__, "--send", url, "--events", str(events)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(SENDERS)
    ]
    results = []
    for sender in senders:
        out, _ = sender.communicate(timeout=900)
        results.append(json.loads(out))
    elapsed = time.perf_counter() - started
    sender_cpu = _children_cpu() - children_before  # the senders, exited and reaped
    stored = get(base + "/stats")["events"]
    receiver_cpu = cpu_seconds(tree(receiver.pid)) - receiver_cpu
    database_cpu = (cpu_seconds(tree(postgres_pid)) - database_cpu) if postgres_pid else 0.0
    receiver.terminate()
    receiver.communicate(timeout=60)
    return {
        "stored": stored,
        "sent": SENDERS * events,
        "dropped": sum(r["dropped"] for r in results),
        "seconds": round(elapsed, 2),
        "events_per_s": round(stored / elapsed),
        "cpu_s": {
            "senders": round(sender_cpu, 1),
            "receiver": round(receiver_cpu, 1),
            "postgres": round(database_cpu, 1),
            "wall_x_cores": round(elapsed * (os.cpu_count() or 1), 1),
        },
    }


def _children_cpu() -> float:
    usage = os.times()
    return float(usage.children_user + usage.children_system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--send", help=argparse.SUPPRESS)
    parser.add_argument("--events", type=int, default=20_000, help="per sender process")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--postgres", metavar="URL", help="an existing server (…/postgres)")
    parser.add_argument("--setups", default="sqlite,postgres-1,postgres-2,postgres-4")
    args = parser.parse_args()
    if args.send:
        send(args.send, args.events)
        return
    server = None if args.postgres else Postgres()
    folder = Path(tempfile.mkdtemp(prefix="cca-bench-sqlite-"))
    try:
        for run in range(args.runs):
            for setup in args.setups.split(","):
                if setup == "sqlite":
                    database, workers, pid = f"sqlite:///{folder}/run{run}.sqlite3", 0, None
                else:
                    workers = int(setup.split("-")[1])
                    database = server.new_database() if server else args.postgres
                    pid = server.pid if server else None
                result = measure(database, workers, args.events, pid)
                print(json.dumps({"setup": setup, "run": run, **result}), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
