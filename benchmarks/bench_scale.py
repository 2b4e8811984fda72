"""Many processes, one fleet: do orchestras sharing slots through Redis keep each host within
its slots, and at what cost?

Run from the repo root: ``python -m benchmarks.bench_scale [--quick]``. Needs ``redis-server``
on ``PATH`` (``make redis``) and the ``redis`` extra.

The preset fleet (``ollama01``: 2 slots, ``ollama02``: 4 slots, 1.5x as fast) is simulated in
this process; a real ``redis-server`` runs on loopback. N worker processes (1, 2, 4, and 8
without ``--quick``), each with its own :class:`Orchestra`, split the same work (``--requests``
requests of ``qwen2.5:14b``, all sent at once), with and without ``coordination``. Reported
per run: the most requests each host ever held at once, running or queued inside it (the
simulator's own counts, seen at every change of its scheduler), and the aggregate throughput (requests per second from the start
signal to the last answer). Plus the cost of one shared slot: a Redis lease taken and given
back (:meth:`RedisSlots.try_acquire` + ``release``), p50 and p95, on loopback.

Two proxies: the same work sent at once over one or two proxy processes (``serve_proxy``, each
its own orchestra) in front of the fleet, coordinated or not.

Results go to ``benchmarks/results/scale.json``; :func:`checks` states the goals: with
coordination no host ever exceeds its slots (processes and proxies); 4 coordinated processes
keep >= 0.97x the throughput of one, every coordinated run >= 0.95x (the fast+slow pair's
capacity); without coordination the overfill shows; lease p95 < 2 ms (the ratios and the
lease cost are reported only in quick mode: too noisy on a shared CI machine).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import anyio
import anyio.abc
import httpx
from anyio.streams.buffered import BufferedByteReceiveStream

from ollama_orchestra._redis_slots import RedisSlots
from ollama_orchestra.sim import SimFleet, SimState, preset_fleet

from .common import Check, read_json, write_json

MODEL = "qwen2.5:14b"
TIME_SCALE = 0.1
NUM_PREDICT = 32

# One worker: its orchestra on the preset fleet (with or without coordination) prints "ready"
# once the fleet is probed, waits for "go" on stdin, sends its requests at once and prints
# "done" when all are answered.
WORKER = r"""
import sys

import anyio

from ollama_orchestra import Orchestra, OrchestraConfig, Server


async def main(urls: str, redis: str, n: int) -> None:
    (u1, u2) = urls.split(",")
    config = OrchestraConfig(
        servers=(
            Server("ollama01", u1, max_concurrency=2),
            Server("ollama02", u2, max_concurrency=4),
        ),
        coordination=redis or None,
    )
    async with Orchestra(config) as orch:
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(
                    lambda i=i: orch.generate("qwen2.5:14b", f"q{i}", options={"num_predict": 32})
                )
        print("done", flush=True)


anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
"""


# One proxy: its own orchestra on the preset fleet (with or without coordination) behind
# ``serve_proxy`` on a free port; prints its URL once it listens, serves until killed.
PROXY = r"""
import sys

import anyio

from ollama_orchestra import OrchestraConfig, Server, serve_proxy


async def main(urls: str, redis: str) -> None:
    (u1, u2) = urls.split(",")
    config = OrchestraConfig(
        servers=(
            Server("ollama01", u1, max_concurrency=2),
            Server("ollama02", u2, max_concurrency=4),
        ),
        coordination=redis or None,
    )
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve_proxy, config, "127.0.0.1", 0)
        print(url, flush=True)


anyio.run(main, sys.argv[1], sys.argv[2])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis() -> Tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found on PATH (`make redis` installs it)")
    port = _free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:  # readiness: PING answers
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("redis-server did not start") from None
            time.sleep(0.02)


async def _line(proc: anyio.abc.Process) -> bytes:
    assert proc.stdout is not None
    with anyio.fail_after(120):
        return await BufferedByteReceiveStream(proc.stdout).receive_until(b"\n", 100)


def _watcher(peaks: Dict[str, int], name: str) -> Any:
    """The most requests ``name`` ever held at once, running or queued inside it (the
    simulator's own counts, seen at every change of its scheduler)."""

    def see(st: SimState) -> bool:
        peaks[name] = max(peaks[name], st.in_flight + st.queued)
        return False

    return see


async def _warm(sim: SimFleet) -> str:
    """The model loaded on both hosts; their URLs, comma-separated."""
    async with httpx.AsyncClient(timeout=60) as client:
        for host in sim:
            body = {"model": MODEL, "prompt": "w", "stream": False}
            body["options"] = {"num_predict": 1}
            (await client.post(host.url + "/api/generate", json=body)).raise_for_status()
    return ",".join(sim[name].url for name in ("ollama01", "ollama02"))


async def one_run(processes: int, requests: int, redis: str) -> Dict[str, Any]:
    """``requests`` split over ``processes`` workers (``redis``: coordinated, "": not)."""
    peaks = {"ollama01": 0, "ollama02": 0}
    async with SimFleet(preset_fleet(), time_scale=TIME_SCALE) as sim:
        urls = await _warm(sim)
        shares = [requests // processes + (i < requests % processes) for i in range(processes)]
        procs: List[anyio.abc.Process] = []
        try:
            async with anyio.create_task_group() as watch:
                for name in peaks:
                    watch.start_soon(sim[name].wait_until, _watcher(peaks, name))
                for share in shares:
                    procs.append(
                        await anyio.open_process(
                            [sys.executable, "-c", WORKER, urls, redis, str(share)], stderr=None
                        )
                    )
                for proc in procs:
                    if await _line(proc) != b"ready":
                        raise RuntimeError("a worker did not start")
                started = time.perf_counter()
                for proc in procs:
                    assert proc.stdin is not None
                    await proc.stdin.send(b"go\n")
                for proc in procs:
                    if await _line(proc) != b"done":
                        raise RuntimeError("a worker failed")
                elapsed = time.perf_counter() - started
                for proc in procs:
                    await proc.wait()
                watch.cancel_scope.cancel()
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    return {
        "processes": processes,
        "coordinated": bool(redis),
        "requests": requests,
        "elapsed_s": elapsed,
        "throughput_rps": requests / elapsed,
        "peak_on_host": peaks,
        "slots": {"ollama01": 2, "ollama02": 4},
    }


async def proxy_run(proxies: int, requests: int, redis: str) -> Dict[str, Any]:
    """``requests`` sent at once through ``proxies`` proxy processes in front of the fleet
    (``redis``: coordinated, "": not), spread evenly over them."""
    peaks = {"ollama01": 0, "ollama02": 0}
    async with SimFleet(preset_fleet(), time_scale=TIME_SCALE) as sim:
        urls = await _warm(sim)
        procs: List[anyio.abc.Process] = []
        try:
            for _ in range(proxies):
                procs.append(
                    await anyio.open_process(
                        [sys.executable, "-c", PROXY, urls, redis], stderr=None
                    )
                )
            fronts = [(await _line(proc)).decode().strip() for proc in procs]
            limits = httpx.Limits(max_connections=requests + 8)
            async with httpx.AsyncClient(timeout=120, limits=limits) as client:

                async def one(i: int) -> None:
                    body = {"model": MODEL, "prompt": f"q{i}", "stream": False}
                    body["options"] = {"num_predict": NUM_PREDICT}
                    url = fronts[i % len(fronts)] + "/api/generate"
                    (await client.post(url, json=body)).raise_for_status()

                async with anyio.create_task_group() as watch:
                    for name in peaks:
                        watch.start_soon(sim[name].wait_until, _watcher(peaks, name))
                    started = time.perf_counter()
                    async with anyio.create_task_group() as tg:
                        for i in range(requests):
                            tg.start_soon(one, i)
                    elapsed = time.perf_counter() - started
                    watch.cancel_scope.cancel()
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.terminate()
                    with anyio.move_on_after(10):
                        await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    return {
        "proxies": proxies,
        "coordinated": bool(redis),
        "requests": requests,
        "elapsed_s": elapsed,
        "throughput_rps": requests / elapsed,
        "peak_on_host": peaks,
        "slots": {"ollama01": 2, "ollama02": 4},
    }


async def lease_overhead(redis: str, rounds: int) -> Dict[str, float]:
    """A shared slot taken and given back: one Redis round trip each, on loopback."""
    samples: List[float] = []
    async with RedisSlots(redis, timeout_s=1.0) as slots:
        for i in range(rounds + 20):
            lease = slots.new_lease()
            t0 = time.perf_counter()
            taken, _ = await slots.try_acquire("bench", 4, lease)
            await slots.release("bench", lease)
            if not taken:
                raise RuntimeError("the bench slot was not free")
            if i >= 20:
                samples.append(time.perf_counter() - t0)
    ordered = sorted(samples)
    return {
        "rounds": rounds,
        "p50_ms": statistics.median(ordered) * 1e3,
        "p95_ms": ordered[int(0.95 * (len(ordered) - 1))] * 1e3,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_scale", description=__doc__)
    parser.add_argument("--requests", type=int, default=192, help="requests per run")
    parser.add_argument("--quick", action="store_true", help="1, 2 and 4 processes, 96 requests")
    args = parser.parse_args(argv)
    counts = (1, 2, 4) if args.quick else (1, 2, 4, 8)
    requests = min(args.requests, 96) if args.quick else args.requests
    proc, url = start_redis()
    runs: List[Dict[str, Any]] = []
    proxy_runs: List[Dict[str, Any]] = []
    try:
        overhead = anyio.run(lease_overhead, url, 300 if args.quick else 2000)
        print(
            f"lease acquire + release: p50 {overhead['p50_ms']:.2f} ms, "
            f"p95 {overhead['p95_ms']:.2f} ms"
        )
        for n in counts:
            for redis in (url, ""):
                run = anyio.run(one_run, n, requests, redis)
                runs.append(run)
                print(
                    f"{n} process(es), {'coordinated  ' if redis else 'uncoordinated'}: "
                    f"{run['throughput_rps']:.1f} req/s, most on a host {run['peak_on_host']} "
                    f"(slots {run['slots']})",
                    flush=True,
                )
        for n, redis in ((1, url), (2, url), (2, "")):
            run = anyio.run(proxy_run, n, requests, redis)
            proxy_runs.append(run)
            print(
                f"{n} prox{'y' if n == 1 else 'ies'}, "
                f"{'coordinated  ' if redis else 'uncoordinated'}: "
                f"{run['throughput_rps']:.1f} req/s, most on a host {run['peak_on_host']} "
                f"(slots {run['slots']})",
                flush=True,
            )
    finally:
        proc.kill()
        proc.wait()
    path = write_json(
        "scale.json",
        {
            "python": sys.version.split()[0],
            "quick": args.quick,
            "lease": overhead,
            "runs": runs,
            "proxies": proxy_runs,
        },
    )
    print(f"wrote {path}")
    for check in checks(args.quick):
        print(check.line())
    return 0


def _peaks(run: Dict[str, Any]) -> Tuple[str, bool]:
    """``"ollama01 2/2, ollama02 4/4"`` and whether any host held more than its slots."""
    peak, slots = run["peak_on_host"], run["slots"]
    shown = ", ".join(f"{h} {peak[h]}/{slots[h]}" for h in slots)
    return shown, any(peak[h] > slots[h] for h in slots)


def checks(quick: bool) -> List[Check]:
    """No overfill with coordination (gated); the overfill without it, the throughput ratios
    (4 coordinated processes >= 0.97x one; every coordinated run >= 95% of the fast+slow
    pair's capacity, the single-process figure) and the lease cost (reported only in quick
    mode: too noisy on a shared CI machine)."""
    data = read_json("scale.json")
    runs = data.get("runs", [])
    if not runs:
        return []
    out: List[Check] = []
    what = "most requests on a host at once (running + queued)"
    for run in runs:
        shown, over = _peaks(run)
        n = run["processes"]
        if run["coordinated"]:
            out.append(
                Check(
                    "scale",
                    f"{n} coordinated processes: {what}",
                    shown,
                    "<= its slots",
                    not over,
                    gated=True,
                )
            )
        elif n > 1:
            out.append(
                Check(
                    "scale",
                    f"{n} uncoordinated processes: {what}",
                    shown,
                    "overfill shown",
                    over,
                )
            )
    by = {(r["processes"], r["coordinated"]): r for r in runs}
    one = by.get((1, True))
    if one is not None:
        capacity = one["throughput_rps"]
        for (n, coordinated), run in sorted(by.items()):
            if n == 1:
                continue
            ratio = run["throughput_rps"] / capacity
            label = "coordinated" if coordinated else "uncoordinated"
            if coordinated and n == 4:
                goal, ok = ">= 0.97x", ratio >= 0.97
            elif coordinated:
                goal, ok = ">= 0.95x (of the pair's capacity)", ratio >= 0.95
            else:
                goal, ok = "reported (below 0.95x expected)", None
            out.append(
                Check(
                    "scale",
                    f"throughput, {n} {label} processes / 1 process",
                    f"{ratio:.3f}x",
                    goal,
                    None if quick else ok,
                )
            )
    for run in data.get("proxies", []):
        shown, over = _peaks(run)
        n, coordinated = run["proxies"], run["coordinated"]
        label = f"{n} {'coordinated' if coordinated else 'uncoordinated'} prox{'y' if n == 1 else 'ies'}"
        out.append(
            Check(
                "scale",
                f"{label}: {what}",
                shown,
                "<= its slots" if coordinated else "overfill shown",
                not over if coordinated else over,
                gated=coordinated,
            )
        )
        if one is not None:
            out.append(
                Check(
                    "scale",
                    f"throughput, {label} / 1 process",
                    f"{run['throughput_rps'] / one['throughput_rps']:.3f}x",
                    "reported",
                    None,
                )
            )
    lease = data.get("lease")
    if lease:
        out.append(
            Check(
                "scale",
                "shared slot: Redis lease acquire + release, p50 / p95",
                f"{lease['p50_ms']:.2f} / {lease['p95_ms']:.2f} ms",
                "p95 < 2 ms",
                None if quick else lease["p95_ms"] < 2.0,
            )
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
