"""Load test of the service: ``profiler serve`` on loopback, driven by a bounded number of
concurrent clients while events are being written, against the same calls in-process.

Steps, in one run:

1. The workspace is copied twice to a temporary folder (the run writes into them).
2. In-process, on one copy: the calls the clients send (a mix of recommend for a known
   shopper, recommend for a one-text shopper, and search), one at a time, timed twice:
   back to back (``idle``), and paced like one client (the same mean pause per call,
   ``local``; a CPU left idle between calls is slower on the next one: search took 4.9 ms
   back to back and 19.5 ms with 0.5 s pauses, in-process, on the machine of the note).
3. ``profiler serve`` on the other copy, with the ``--workers`` its ``auto`` names (or
   ``--server-workers``), every process warmed; ``--clients`` threads, each
   with its own HTTP connection, send requests for ``--seconds``, with a pause drawn
   uniformly from 0 to twice each ``--think-ms`` value (0: back to back, the server
   saturated). One more client posts a new shopper's event every
   ``1 / --writes-per-second`` seconds meanwhile (each write publishes a new generation).
4. The same load in-process, without HTTP (``threads``): a child process set up as the
   server is (one compute thread per request), ``--clients`` threads calling the
   workspace with the same mix and pauses for ``--seconds``, and the same writer calling
   ``add_events``. This is the like-for-like comparison for one server process: the queue
   of 8 callers on 2 cores is in both, so the ratio measures what HTTP and the service
   add (several server processes share that queue out, so there it is below 1).
5. Per call and pause: requests, errors (any status but 200, or a failed connection),
   throughput, p50/p99 over HTTP, and the ratio of the HTTP p99 to the in-process p99
   under the same concurrent load (``threads ratio``), paced the same way one call at a
   time (``ratio``) and back to back (``idle ratio``); the server's own ``/metrics``
   request count as a cross-check.

Clients and server share this machine's cores, as they would on a 2-core box: with no
pause, 8 clients on 2 cores queue by construction (Little's law: p50 >= 8 x the CPU time
of a call / the cores), so the ratio there measures the queue, not the service.

Run from the repository root, after ``make demo`` (which builds ``index/demo``)::

    .venv/bin/python benchmarks/service.py
    .venv/bin/python benchmarks/service.py --clients 8 --seconds 60 --think-ms 0,250

Prints a table and writes JSON (default ``benchmarks/results/service.json``).
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from machine import write_results

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "service.json"
QUERIES = [
    "linen summer dress",
    "warm wool sweater",
    "high waisted skinny jeans",
    "a swimsuit that stays put",
    "soft pajamas",
    "a denim jacket for spring",
    "black work trousers",
    "flowy maxi skirt",
]
MIX = (("recommend (known)", 0.5), ("recommend (one text)", 0.2), ("search", 0.3))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def request_for(call: str, rng: random.Random, users: list[str]) -> tuple[str, dict]:
    if call == "recommend (known)":
        return "/recommend", {"user_id": rng.choice(users), "k": 10}
    if call == "recommend (one text)":
        return "/recommend", {"history": [rng.choice(QUERIES)], "k": 10}
    return "/search", {"query": rng.choice(QUERIES), "k": 10}


def call_workspace(ws, call: str, rng: random.Random, users: list[str]) -> None:
    """One call of the mix on the workspace itself (what :func:`request_for` sends)."""
    if call == "recommend (known)":
        ws.recommend(rng.choice(users), k=10)
    elif call == "recommend (one text)":
        ws.recommend(history=[rng.choice(QUERIES)], k=10)
    else:
        ws.search(rng.choice(QUERIES), k=10)


def warm(ws, users: list[str]) -> None:
    """Every query's shapes once (new input shapes compile kernels) and 20 known shoppers,
    as the server is warmed over HTTP."""
    for query in QUERIES:
        ws.search(query, k=10)
        ws.recommend(history=[query], k=10)
    for user in users[:20]:
        ws.recommend(user, k=10)


def search_event(prefix: str, n: int) -> dict:
    """The ``n``-th event a writer adds: a new shopper's search."""
    text = QUERIES[n % len(QUERIES)]
    return {"user_id": f"{prefix}-{n}", "timestamp": 1.7e9 + n, "kind": "search", "text": text}


def in_process(
    path: Path, users: list[str], n: int, seed: int, think: float, writes_per_second: float
) -> dict[str, list[float]]:
    """``n`` calls in this process, one at a time, drawn from the same mix and paced like a
    client (``think``), while a thread adds one event every ``1 / writes_per_second`` s:
    the service's conditions without HTTP and without concurrent callers."""
    from profiler.workspace import Workspace

    ws = Workspace.open(path, show_progress_bar=False)
    rng = random.Random(seed)
    warm(ws, users)
    stop = threading.Event()

    def writer() -> None:
        import pandas as pd

        written = 0
        while not stop.wait(1.0 / writes_per_second):
            ws.add_events(pd.DataFrame([search_event(f"local-{think:g}", written)]))
            written += 1

    thread = threading.Thread(target=writer) if writes_per_second > 0 else None
    if thread is not None:
        thread.start()
    names, weights = zip(*MIX)
    times: dict[str, list[float]] = {name: [] for name in names}
    try:
        for _ in range(n):
            name = rng.choices(names, weights)[0]
            started = time.perf_counter()
            call_workspace(ws, name, rng, users)
            times[name].append((time.perf_counter() - started) * 1000)
            if think:
                time.sleep(rng.uniform(0, 2 * think) / 1000)
    finally:
        stop.set()
        if thread is not None:
            thread.join()
        ws.close()
    return times


def in_process_threads(
    path: Path, users: list[str], clients: int, seconds: float, think: float, args
) -> dict[str, list[float]]:
    """The HTTP load without HTTP, in a child process set up as ``profiler serve`` is:
    ``clients`` threads calling the workspace (same mix, same pauses) for ``seconds``
    while one thread adds an event every ``1 / writes_per_second`` s."""
    import json

    command = [sys.executable, __file__, "--threads-child", str(path), "--think-ms", f"{think:g}"]
    command += ["--clients", str(clients), "--seconds", f"{seconds:g}", "--seed", str(args.seed)]
    command += ["--writes-per-second", f"{args.writes_per_second:g}", "--users", ",".join(users)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def threads_child(args) -> int:
    """``--threads-child``: the body of :func:`in_process_threads`; prints one JSON line."""
    import json

    import pandas as pd

    from profiler.service.app import one_thread_per_request
    from profiler.workspace import Workspace

    one_thread_per_request()
    users = args.users.split(",")
    think = float(args.think_ms)
    ws = Workspace.open(args.threads_child, show_progress_bar=False)
    warm(ws, users)
    names, weights = zip(*MIX)
    times: dict[str, list[float]] = {name: [] for name in names}
    lock = threading.Lock()
    stop = time.monotonic() + args.seconds

    def client(number: int) -> None:
        rng = random.Random(args.seed * 1000 + number)
        while time.monotonic() < stop:
            call = rng.choices(names, weights)[0]
            started = time.perf_counter()
            call_workspace(ws, call, rng, users)
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                times[call].append(elapsed)
            if think:
                time.sleep(rng.uniform(0, 2 * think) / 1000)

    def writer() -> None:
        n = 0
        while time.monotonic() < stop:
            started = time.perf_counter()
            ws.add_events(pd.DataFrame([search_event(f"threads-{think:g}", n)]))
            n += 1
            time.sleep(max(0.0, 1.0 / args.writes_per_second - (time.perf_counter() - started)))

    run_clients(client, writer, args)
    ws.close()
    print(json.dumps(times))
    return 0


def run_clients(client, writer, args) -> None:
    """``args.clients`` threads running ``client(number)`` and, when writes are asked
    for, one running ``writer()``; returns when all have finished."""
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    if args.writes_per_second > 0:
        threads.append(threading.Thread(target=writer))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(path: Path, port: int, threads: int | None, workers: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "profiler.cli", "serve", "--workspace", str(path)]
    if threads is not None:
        command += ["--threads", str(threads)]
    command += ["--workers", str(workers)]
    server = subprocess.Popen([*command, "--port", str(port), "-q"])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise RuntimeError("the server did not become ready in 300 s")


def drive(url: str, users: list[str], args, think: float) -> tuple[dict, list[str]]:
    samples: dict[str, list[tuple[float, bool]]] = {name: [] for name, _ in MIX}
    samples["events (writer)"] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + args.seconds
    names, weights = zip(*MIX)

    def client(number: int) -> None:
        rng = random.Random(args.seed * 1000 + number)
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.monotonic() < stop:
                call = rng.choices(names, weights)[0]
                path, body = request_for(call, rng, users)
                started = time.perf_counter()
                try:
                    ok = http.post(path, json=body).status_code == 200
                except httpx.HTTPError as exc:
                    ok = False
                    with lock:
                        failures.append(f"{call}: {exc!r}")
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    samples[call].append((elapsed, ok))
                if think:
                    time.sleep(rng.uniform(0, 2 * think) / 1000)

    def writer() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            n = 0
            while time.monotonic() < stop:
                event = search_event("bench-shopper", n)
                started = time.perf_counter()
                try:
                    answer = http.post("/events", json={"events": [event]})
                    ok = answer.status_code == 200 and answer.json()["added"] == 1
                except httpx.HTTPError as exc:
                    ok = False
                    failures.append(f"events: {exc!r}")
                samples["events (writer)"].append(((time.perf_counter() - started) * 1000, ok))
                n += 1
                time.sleep(max(0.0, 1.0 / args.writes_per_second - (time.perf_counter() - started)))

    run_clients(client, writer, args)
    return samples, failures


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'think':>5} {'call':<22} {'n':>5} {'errors':>6} {'req/s':>6} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'threads p99':>11} {'ratio':>6} {'local p99':>9} {'ratio':>6} "
        f"{'idle p99':>8} {'ratio':>6}"
    )
    lines = [header, "-" * len(header)]

    def ratio(value) -> str:
        return "" if value is None else f"{value:.2f}x"

    for row in rows:
        lines.append(
            f"{row['think_ms']:>5.0f} {row['call']:<22} {row['requests']:>5} {row['errors']:>6} "
            f"{row['per_second']:>6.1f} {row['p50_ms']:>7.1f} {row['p99_ms']:>7.1f} "
            f"{row['threads_p99_ms']:>11.1f} {ratio(row['p99_ratio_vs_threads']):>6} "
            f"{row['in_process_p99_ms']:>9.1f} {ratio(row['p99_ratio']):>6} "
            f"{row['idle_p99_ms']:>8.1f} {ratio(row['p99_ratio_vs_idle']):>6}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, default=Path("index") / "demo")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--writes-per-second", type=float, default=1.0)
    parser.add_argument(
        "--think-ms",
        default="0,100,250",
        help="mean pause of each client between requests, ms; a comma list runs each "
        "in turn against the same server (0: back to back, the server saturated)",
    )
    parser.add_argument(
        "--in-process", type=int, default=400, help="timed in-process calls per condition"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-threads", type=int, help="profiler serve --threads")
    parser.add_argument(
        "--server-workers", type=int, help="profiler serve --workers (default: its auto)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--threads-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--users", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads_child is not None:
        return threads_child(args)
    if not (args.workspace / "CURRENT").is_file():
        raise SystemExit(f"{args.workspace}: no workspace; run `make demo` first")

    thinks = [float(v) for v in str(args.think_ms).split(",") if v.strip()]
    with tempfile.TemporaryDirectory(prefix="profiler-service-bench-") as scratch:
        path, local_path = Path(scratch) / "ws", Path(scratch) / "local"
        shutil.copytree(args.workspace, path, symlinks=True)
        shutil.copytree(args.workspace, local_path, symlinks=True)
        from profiler.workspace import Workspace

        with Workspace.open(path, show_progress_bar=False) as ws:
            users = random.Random(args.seed).sample(ws.users, min(500, len(ws.users)))
        print(f"in-process, idle: {args.in_process} calls back to back, no writes")
        idle = in_process(local_path, users, args.in_process, args.seed, 0.0, 0.0)
        local = {}
        for think in thinks:
            print(f"in-process, think {think:g} ms, no writes")
            local[think] = in_process(local_path, users, args.in_process, args.seed, think, 0.0)
        threaded = {}
        for think in thinks:
            print(
                f"in-process, {args.clients} threads for {args.seconds:.0f} s, "
                f"{args.writes_per_second:g} writes/s, think {think:g} ms"
            )
            threaded[think] = in_process_threads(
                local_path, users, args.clients, args.seconds, think, args
            )
        port = free_port()
        from profiler.service.app import auto_workers

        workers = args.server_workers or auto_workers(path)  # the server's default, named
        server = start_server(path, port, args.server_threads, workers)
        url = f"http://127.0.0.1:{port}"
        try:
            warmed: set[int] = set()
            for _ in range(50):  # warm every process the same way (a connection each)
                with httpx.Client(base_url=url, timeout=60) as http:
                    process = http.get("/readyz").json()["process"]
                    if process in warmed:
                        continue
                    warmed.add(process)
                    for query in QUERIES:
                        http.post("/search", json={"query": query, "k": 10})
                        http.post("/recommend", json={"history": [query], "k": 10})
                    for user in users[:20]:
                        http.post("/recommend", json={"user_id": user, "k": 10})
                if len(warmed) == workers:
                    break
            print(f"warmed {len(warmed)} of {workers} server processes")
            with httpx.Client(base_url=url, timeout=60) as http:
                before = metric_total(http)
            runs = []
            for think in thinks:
                print(
                    f"{args.clients} clients for {args.seconds:.0f} s, "
                    f"{args.writes_per_second:g} writes/s, think {think:g} ms"
                )
                samples, failures = drive(url, users, args, think)
                runs.append((think, samples, failures))
            with httpx.Client(base_url=url, timeout=60) as http:
                counted = metric_total(http) - before
        finally:
            server.terminate()
            server.wait(timeout=60)

    rows, failures = [], []
    for think, samples, failed in runs:
        rows += summarise(samples, local[think], idle, threaded[think], think, args.seconds)
        failures += failed
    sent = sum(r["requests"] for r in rows)
    print(format_table(rows))
    print(f"\nserver counted {counted:.0f} of the {sent} requests sent")
    for failure in failures[:10]:
        print("failure:", failure)
    write_results(
        args.out,
        "service",
        {
            "workspace": str(args.workspace),
            "clients": args.clients,
            "seconds": args.seconds,
            "writes_per_second": args.writes_per_second,
            "think_ms": args.think_ms,
            "mix": dict(MIX),
            "in_process_calls": args.in_process,
            "seed": args.seed,
            "server_threads": args.server_threads,
            "server_workers": workers,
        },
        rows,
        server_counted=counted,
        failures=failures[:50],
    )
    return 0


def summarise(
    samples: dict, local: dict, idle: dict, threaded: dict, think: float, seconds: float
) -> list[dict]:
    rows = []
    for call, measured in samples.items():
        times = [t for t, _ in measured]
        p99 = percentile(times, 99)
        same, alone, loaded = local.get(call), idle.get(call), threaded.get(call)
        rows.append(
            {
                "think_ms": think,
                "call": call,
                "requests": len(measured),
                "errors": sum(not ok for _, ok in measured),
                "per_second": len(measured) / seconds,
                "p50_ms": percentile(times, 50),
                "p99_ms": p99,
                "in_process_p50_ms": percentile(same, 50) if same else float("nan"),
                "in_process_p99_ms": percentile(same, 99) if same else float("nan"),
                "p99_ratio": p99 / percentile(same, 99) if same else None,
                "threads_p50_ms": percentile(loaded, 50) if loaded else float("nan"),
                "threads_p99_ms": percentile(loaded, 99) if loaded else float("nan"),
                "p99_ratio_vs_threads": p99 / percentile(loaded, 99) if loaded else None,
                "idle_p99_ms": percentile(alone, 99) if alone else float("nan"),
                "p99_ratio_vs_idle": p99 / percentile(alone, 99) if alone else None,
            }
        )
    return rows


def metric_total(http: httpx.Client) -> float:
    """The server's ``profiler_requests_total`` summed over recommend, search and events."""
    total = 0.0
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("profiler_requests_total{") and any(
            f'route="{r}"' in line for r in ("/recommend", "/search", "/events")
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


if __name__ == "__main__":
    raise SystemExit(main())
