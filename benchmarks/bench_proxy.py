"""What does the drop-in path cost? Latency added per request by the transport and the proxy.

Run from the repo root: ``python -m benchmarks.bench_proxy [--requests 300]``.

One simulated host with an instant model runs in a child process. This process sends the same
request (``/api/generate``, 4 tokens) over and over, one at a time, rotating between three
paths so that drift affects them alike:

- ``direct``: httpx straight to the host;
- ``transport``: httpx with :class:`OrchestraTransport` (the orchestra's request path, no
  extra HTTP hop);
- ``proxy``: httpx to the proxy (uvicorn, in this process) which uses the transport;
- ``direct_v1`` and ``proxy_v1``: the same request in OpenAI's shape (``/v1/completions``),
  to the host's ``/v1`` and to the proxy's, which translates it into the native request
  (``ollama_orchestra._openai``) and its answer back, as the host itself does.

Reported per path: median, mean and p95 latency; per front end: the ratio of its median to
the direct one of the same API (native or ``/v1``) and the microseconds it adds. Results go
to ``benchmarks/results/proxy.json``; :func:`checks` puts the added latencies in the summary.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence

import anyio
import httpx

from ollama_orchestra import Orchestra, OrchestraConfig, OrchestraTransport, Server, serve_proxy
from ollama_orchestra.sim import HostProfile, ModelSpec, SimServer

from .common import Check, read_json, write_json

MODEL = "fast:latest"
TIME_SCALE = 0.01  # the host answers at once: what is left is the path itself


def _summary(samples: List[float]) -> Dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_us": statistics.median(ordered) * 1e6,
        "mean_us": statistics.fmean(ordered) * 1e6,
        "p95_us": ordered[int(0.95 * (len(ordered) - 1))] * 1e6,
    }


async def measure(requests: int, warmup: int, stream: bool) -> Dict[str, object]:
    profile = HostProfile(
        "bench",
        (ModelSpec(MODEL, size_gb=0.1, decode_tps=2000.0, load_s=0.01, default_num_predict=4),),
        num_parallel=1,
    )
    body = {"model": MODEL, "prompt": "hello", "stream": stream}
    native, v1 = "/api/generate", "/v1/completions"
    async with SimServer(profile, time_scale=TIME_SCALE, mode="subprocess") as host:
        config = OrchestraConfig(servers=(Server("bench", host.url, max_concurrency=1),))
        async with Orchestra(config) as orch, anyio.create_task_group() as tg:
            url: str = await tg.start(serve_proxy, orch, "127.0.0.1", 0)
            clients = {
                "direct": httpx.AsyncClient(base_url=host.url, timeout=30),
                "transport": httpx.AsyncClient(
                    base_url="http://orchestra", transport=OrchestraTransport(orch), timeout=30
                ),
                "proxy": httpx.AsyncClient(base_url=url, timeout=30),
                "direct_v1": httpx.AsyncClient(base_url=host.url, timeout=30),
                "proxy_v1": httpx.AsyncClient(base_url=url, timeout=30),
            }
            samples: Dict[str, List[float]] = {name: [] for name in clients}
            try:
                for i in range(warmup + requests):
                    for name, client in clients.items():
                        started = time.perf_counter()
                        path = v1 if name.endswith("_v1") else native
                        async with client.stream("POST", path, json=body) as r:
                            async for _ in r.aiter_bytes():
                                pass
                        elapsed = time.perf_counter() - started
                        if r.status_code != 200:
                            raise RuntimeError(f"{name}: {r.status_code}")
                        if i >= warmup:
                            samples[name].append(elapsed)
            finally:
                for client in clients.values():
                    await client.aclose()
            tg.cancel_scope.cancel()
    stats = {name: _summary(s) for name, s in samples.items()}
    added = {}
    for name, direct in (("transport", "direct"), ("proxy", "direct"), ("proxy_v1", "direct_v1")):
        base = stats[direct]["median_us"]
        added[name] = {
            "ratio": stats[name]["median_us"] / base,
            "added_us": stats[name]["median_us"] - base,
        }
    return {"stream": stream, "requests": requests, "latency": stats, "vs_direct": added}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_proxy", description=__doc__)
    parser.add_argument("--requests", type=int, default=300, help="requests per path and mode")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="60 requests per path (CI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.warmup = min(args.requests, 60), min(args.warmup, 10)
    report = []
    for stream in (False, True):
        result = anyio.run(measure, args.requests, args.warmup, stream)
        report.append(result)
        lat = result["latency"]
        assert isinstance(lat, dict)
        vs = result["vs_direct"]
        assert isinstance(vs, dict)
        print(f"stream={str(stream).lower():5}  {args.requests} sequential requests per path")
        print(f"  {'path':10} {'median':>10} {'mean':>10} {'p95':>10}   vs direct (same API)")
        for name, s in lat.items():
            extra = (
                f"x{vs[name]['ratio']:.2f}, +{vs[name]['added_us']:.0f} us" if name in vs else ""
            )
            print(
                f"  {name:10} {s['median_us']:8.0f}us {s['mean_us']:8.0f}us "
                f"{s['p95_us']:8.0f}us   {extra}"
            )
    path = write_json("proxy.json", {"python": sys.version.split()[0], "runs": report})
    print(f"wrote {path}")
    return 0


def checks(quick: bool) -> List[Check]:
    """The added latencies, native and ``/v1``, side by side in the summary (reported only)."""
    out: List[Check] = []
    for run in read_json("proxy.json").get("runs", []):
        mode = "streamed" if run["stream"] else "whole answer"
        vs = run["vs_direct"]
        for name, label in (("proxy", "native /api/generate"), ("proxy_v1", "/v1/completions")):
            if name in vs:
                row = vs[name]
                out.append(
                    Check(
                        "proxy",
                        f"latency the proxy adds, {label}, {mode}",
                        f"+{row['added_us']:.0f} us (x{row['ratio']:.2f})",
                        "reported",
                        None,
                    )
                )
    return out


if __name__ == "__main__":
    sys.exit(main())
