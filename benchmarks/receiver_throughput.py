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
(``/stats``) divided by the time from the senders' start (all ready, payloads
built) to the last sender's flush returning. CPU is summed per part (the
senders, the receiver's processes, PostgreSQL's server processes) from
``/proc``, per event stored, to show where the machine's cores went.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import statistics
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
    print("ready", flush=True)
    sys.stdin.readline()  # go: all senders start together, imports and payloads done
    cpu_started = time.process_time()
    for properties in payloads:
        client.track("dl_add_to_cart", properties)
    delivered = client.flush(timeout=600)
    stats = client.stats()
    client.shutdown(timeout=5)
    cpu = time.process_time() - cpu_started
    print(json.dumps({"dropped": stats.dropped, "ok": delivered, "cpu": cpu}))


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
    senders = [
        subprocess.Popen(
            [sys.executable, __file__, "--send", url, "--events", str(events)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(SENDERS)
    ]
    for sender in senders:
        assert sender.stdout is not None and sender.stdout.readline().strip() == "ready"
    receiver_cpu = cpu_seconds(tree(receiver.pid))
    database_cpu = cpu_seconds(tree(postgres_pid)) if postgres_pid else 0.0
    started = time.perf_counter()
    for sender in senders:
        assert sender.stdin is not None
        sender.stdin.write("go\n")
        sender.stdin.flush()
    results = []
    for sender in senders:
        out, _ = sender.communicate(timeout=900)
        results.append(json.loads(out))
    elapsed = time.perf_counter() - started
    sender_cpu = sum(result["cpu"] for result in results)
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
        "cpu_us_per_event": {
            "senders": round(sender_cpu / stored * 1e6, 1),
            "receiver": round(receiver_cpu / stored * 1e6, 1),
            "postgres": round(database_cpu / stored * 1e6, 1),
        },
    }


def database_on(server_url: str) -> str:
    """A new database on an existing server, as a URL (for ``--postgres``)."""
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    return server_url.rsplit("/", 1)[0] + "/" + name


def summary(results: list[dict[str, Any]]) -> str:
    """Medians per setup, as a Markdown table."""
    lines = [
        "| setup | stored events/s | CPU us/event: senders | receiver | PostgreSQL |",
        "|---|---:|---:|---:|---:|",
    ]
    for setup in dict.fromkeys(r["setup"] for r in results):
        runs = [r for r in results if r["setup"] == setup]
        rate = statistics.median(r["events_per_s"] for r in runs)
        cpu = [statistics.median(r["cpu_us_per_event"][part] for r in runs)
               for part in ("senders", "receiver", "postgres")]  # fmt: skip
        lines.append(f"| {setup} | {rate:,.0f} | " + " | ".join(f"{c:.1f}" for c in cpu) + " |")
    return "\n".join(lines)


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
    results = []
    try:
        for run in range(args.runs):  # setups interleaved, so that all see the same noise
            for setup in args.setups.split(","):
                if setup == "sqlite":
                    database, workers, pid = f"sqlite:///{folder}/run{run}.sqlite3", 0, None
                else:
                    workers = int(setup.split("-")[1])
                    database = server.new_database() if server else database_on(args.postgres)
                    pid = server.pid if server else None
                measured = measure(database, workers, args.events, pid)
                result = {"setup": setup, "run": run, **measured}
                results.append(result)
                print(json.dumps(result), flush=True)
        print(summary(results))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
