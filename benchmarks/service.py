"""Load test of the service: ``profiler serve`` on loopback, driven by a bounded number of
concurrent clients while events are being written, against the same calls in-process.

Steps, in one run:

1. The workspace is copied to a temporary folder (the run writes events into it).
2. In-process: the copy opened in this process, and each call (recommend for a known
   shopper, recommend for a one-text shopper, search) timed one at a time on the same
   inputs the clients send: the p50/p99 the service is held against.
3. ``profiler serve`` in its own process; ``--clients`` threads, each with its own HTTP
   connection, send requests back to back (no think time unless ``--think-ms``): a mix of
   known-shopper recommends, one-text recommends and searches, for ``--seconds``. One
   more client posts a new shopper's event every ``1 / --writes-per-second`` seconds
   meanwhile (each write publishes a new workspace generation).
4. Per call: requests, errors (any status but 200, or a failed connection), throughput,
   p50/p99 over HTTP, the in-process p50/p99 and the ratio of the p99s; the server's own
   ``/metrics`` request count as a cross-check.

Clients and server share this machine's cores, as they would on a 2-core box.

Run from the repository root, after ``make demo`` (which builds ``index/demo``)::

    .venv/bin/python benchmarks/service.py
    .venv/bin/python benchmarks/service.py --clients 8 --seconds 60 --writes-per-second 1

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


def in_process(path: Path, users: list[str], n: int, seed: int) -> dict[str, list[float]]:
    from profiler.workspace import Workspace

    ws = Workspace.open(path, show_progress_bar=False)
    rng = random.Random(seed)
    calls = {
        "recommend (known)": lambda: ws.recommend(rng.choice(users), k=10),
        "recommend (one text)": lambda: ws.recommend(history=[rng.choice(QUERIES)], k=10),
        "search": lambda: ws.search(rng.choice(QUERIES), k=10),
    }
    times: dict[str, list[float]] = {}
    for name, call in calls.items():
        for _ in range(5):
            call()  # warm: model, caches
        times[name] = []
        for _ in range(n):
            started = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - started) * 1000)
    ws.close()
    return times


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(path: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "profiler.cli", "serve", "--workspace", str(path)]
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
                event = {
                    "user_id": f"bench-shopper-{n}",
                    "timestamp": 1.7e9 + n,
                    "kind": "search",
                    "text": QUERIES[n % len(QUERIES)],
                }
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

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    if args.writes_per_second > 0:
        threads.append(threading.Thread(target=writer))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return samples, failures


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'think':>5} {'call':<22} {'n':>6} {'errors':>6} {'req/s':>7} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'in-proc p50':>11} {'in-proc p99':>11} {'p99 ratio':>9}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        ratio = row["p99_ratio"]
        lines.append(
            f"{row['think_ms']:>5.0f} {row['call']:<22} {row['requests']:>6} {row['errors']:>6} "
            f"{row['per_second']:>7.1f} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} "
            f"{row['in_process_p50_ms']:>11.1f} {row['in_process_p99_ms']:>11.1f} "
            f"{'' if ratio is None else f'{ratio:.2f}x':>9}"
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
        default="0,100,250,500",
        help="mean pause of each client between requests, ms; a comma list runs each "
        "in turn against the same server (0: back to back, the server saturated)",
    )
    parser.add_argument("--in-process", type=int, default=300, help="timed calls per kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not (args.workspace / "CURRENT").is_file():
        raise SystemExit(f"{args.workspace}: no workspace; run `make demo` first")

    with tempfile.TemporaryDirectory(prefix="profiler-service-bench-") as scratch:
        path = Path(scratch) / "ws"
        shutil.copytree(args.workspace, path, symlinks=True)
        from profiler.workspace import Workspace

        with Workspace.open(path, show_progress_bar=False) as ws:
            users = random.Random(args.seed).sample(ws.users, min(500, len(ws.users)))
        print(f"in-process: {args.in_process} calls of each kind, one at a time")
        local = in_process(path, users, args.in_process, args.seed)
        port = free_port()
        server = start_server(path, port)
        url = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=url, timeout=60) as http:
                for name, _ in MIX:  # warm the server's caches the same way
                    for _ in range(5):
                        path_, body = request_for(name, random.Random(1), users)
                        http.post(path_, json=body)
                before = metric_total(http)
            runs = []
            for think in [float(v) for v in str(args.think_ms).split(",") if v.strip()]:
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
        rows += summarise(samples, local, think, args.seconds)
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
        },
        rows,
        server_counted=counted,
        failures=failures[:50],
    )
    return 0


def summarise(samples: dict, local: dict, think: float, seconds: float) -> list[dict]:
    rows = []
    for call, measured in samples.items():
        times = [t for t, _ in measured]
        baseline = local.get(call)
        p99 = percentile(times, 99)
        rows.append(
            {
                "think_ms": think,
                "call": call,
                "requests": len(measured),
                "errors": sum(not ok for _, ok in measured),
                "per_second": len(measured) / seconds,
                "p50_ms": percentile(times, 50),
                "p99_ms": p99,
                "in_process_p50_ms": percentile(baseline, 50) if baseline else float("nan"),
                "in_process_p99_ms": percentile(baseline, 99) if baseline else float("nan"),
                "p99_ratio": p99 / percentile(baseline, 99) if baseline else None,
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
