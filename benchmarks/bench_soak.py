"""Does the proxy hold up under abuse, and give everything back? A bounded soak.

Run from the repo root: ``python -m benchmarks.bench_soak [--seconds 60] [--quick]``.

Two simulated hosts run in this process; the proxy runs as the CLI would start it
(``python -m ollama_orchestra proxy`` in a child process, with small limits), so its memory
and file descriptors are its own. For ``--seconds``, workers drive it at once with:

- valid requests (``/api/generate`` and ``/api/chat``, streamed and whole; ``/api/embed``):
  every one must be answered 200, with a complete answer;
- hostile bodies (not JSON, 100,000 levels of nesting, bytes that are not UTF-8, fields of
  the wrong type, a body that is not an object): each must be a 400 ``{"error": ...}``;
- oversized bodies (over ``--max-body-bytes``, declared by Content-Length or chunked): 413;
- stalled connections (half a header; a header and half a body): each must be closed by the
  proxy within its header/body timeouts (plus a margin).

Before the soak, a warm-up round of the same mix sets the baseline; after it, once the
clients are gone, the proxy's RSS and open file descriptors must be back within a tolerance
of that baseline (``RSS_TOLERANCE_MIB``, ``FD_TOLERANCE``), and nothing may be left held: the
orchestra's in-flight count (``GET /status``) and each simulated host's in-flight and queued
requests back at 0. Linux only for RSS and descriptors (read from ``/proc``); elsewhere they
are reported as unavailable. Results go to ``benchmarks/results/soak.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import anyio
import anyio.abc
import httpx

from ollama_orchestra.sim import HostProfile, ModelSpec, SimFleet

from .common import Check, read_json, write_json

MODEL = "soak:latest"
EMBED = "soak-embed:latest"
#: The proxy's RSS after the soak may exceed its warmed-up baseline by this much.
RSS_TOLERANCE_MIB = 16.0
#: ... and its open descriptors by this many: its pool of kept-alive connections to the two
#: hosts (4 slots each) may hold a few more or fewer than at the baseline. A leak would show
#: in hundreds: the soak opens thousands of connections.
FD_TOLERANCE = 8
QUICK_SECONDS = 8.0
FULL_SECONDS = 60.0
MAX_BODY = 256 * 1024
HEADER_TIMEOUT_S = 0.5
BODY_TIMEOUT_S = 0.5
KEEP_ALIVE_S = 2.0

HOSTILE: List[Tuple[str, bytes]] = [
    ("/api/generate", b"{not json"),
    ("/api/generate", b"[" * 100_000),
    ("/api/chat", b'{"model": "soak", "messages": "\xff\xfe"}'),
    ("/api/chat", json.dumps({"model": MODEL, "messages": "hello"}).encode()),
    ("/api/generate", json.dumps({"model": MODEL, "prompt": "x", "options": [1]}).encode()),
    ("/api/generate", json.dumps({"model": MODEL, "prompt": "x", "stream": "false"}).encode()),
    ("/api/generate", json.dumps({"model": MODEL, "keep_alive": {}}).encode()),
    ("/api/embed", json.dumps({"model": EMBED, "input": [1, 2]}).encode()),
    ("/api/chat", b"[1, 2, 3]"),
]


@dataclass
class Tally:
    valid: int = 0
    valid_ok: int = 0
    hostile: int = 0
    hostile_400: int = 0
    oversized: int = 0
    oversized_413: int = 0
    oversized_reset: int = 0
    oversized_late: int = 0
    stalled: int = 0
    stalled_closed: int = 0
    failures: List[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        if len(self.failures) < 20:
            self.failures.append(what)


def _proc_figures(pid: int) -> Tuple[Optional[float], Optional[int]]:
    """(RSS in MiB, open descriptors) of ``pid`` from /proc; ``None`` where unavailable."""
    rss: Optional[float] = None
    fds: Optional[int] = None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return rss, fds


async def _valid(h: httpx.AsyncClient, i: int, tally: Tally) -> None:
    kind = i % 5
    tally.valid += 1
    try:
        if kind == 4:
            r = await h.post("/api/embed", json={"model": EMBED, "input": ["a", f"b{i}"]})
            ok = r.status_code == 200 and len(r.json()["embeddings"]) == 2
        else:
            path = "/api/chat" if kind % 2 else "/api/generate"
            body: Dict[str, Any] = {"model": MODEL, "stream": kind < 2}
            if path == "/api/chat":
                body["messages"] = [{"role": "user", "content": f"hi {i}"}]
            else:
                body["prompt"] = f"hi {i}"
            r = await h.post(path, json=body)
            lines = [json.loads(line) for line in r.text.splitlines() if line.strip()]
            ok = r.status_code == 200 and bool(lines) and lines[-1].get("done") is True
        if ok:
            tally.valid_ok += 1
        else:
            tally.fail(f"valid {i}: {r.status_code} {r.text[:120]}")
    except httpx.HTTPError as exc:
        tally.fail(f"valid {i}: {type(exc).__name__} {exc}")


async def _hostile(h: httpx.AsyncClient, i: int, tally: Tally) -> None:
    path, data = HOSTILE[i % len(HOSTILE)]
    tally.hostile += 1
    try:
        r = await h.post(path, content=data, headers={"content-type": "application/json"})
        if r.status_code == 400 and isinstance(r.json().get("error"), str):
            tally.hostile_400 += 1
        else:
            tally.fail(f"hostile {path}: {r.status_code} {r.text[:120]}")
    except (httpx.HTTPError, ValueError) as exc:
        tally.fail(f"hostile {path}: {type(exc).__name__} {exc}")


async def _read_all(stream: anyio.abc.SocketStream, limit_s: float) -> Optional[bytes]:
    """What the server sends until it closes; ``None`` if it is still open after the limit."""
    data = b""
    with anyio.move_on_after(limit_s):
        while True:
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return data
    return None


async def _oversized(host: str, port: int, i: int, tally: Tally) -> None:
    """A body over the limit: declared (413 before any of it is read) or chunked (413 once
    the limit is passed). A chunked upload may instead see its connection reset: the proxy
    closes after its 413 and the bytes still in flight make the kernel answer with a reset
    that can discard the 413 before it is read. Either way the body was refused. A client
    that itself sends its headers :data:`HEADER_TIMEOUT_S` or more after it connected (this
    process's loop is busy with every other client and both hosts) is a stalled connection
    to the proxy, which closes it as it must: counted apart, as late."""
    tally.oversized += 1
    chunked = i % 2 == 1
    raw: Optional[bytes] = None
    late = 0.0
    try:
        async with await anyio.connect_tcp(host, port) as s:
            connected = anyio.current_time()
            framing = (
                b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % (MAX_BODY * 4)
            )
            await s.send(b"POST /api/generate HTTP/1.1\r\nHost: soak\r\n%s\r\n\r\n" % framing)
            late = anyio.current_time() - connected
            if chunked:
                piece = b"%x\r\n%s\r\n" % (64 * 1024, b" " * 64 * 1024)
                with anyio.move_on_after(5):
                    for _ in range(MAX_BODY // (64 * 1024) + 2):
                        await s.send(piece)
            raw = await _read_all(s, 5)
    except (OSError, anyio.BrokenResourceError):
        raw = b""  # reset by the proxy while sending: refused
    if raw is not None and raw.startswith(b"HTTP/1.1 413"):
        tally.oversized_413 += 1
    elif raw == b"" and late >= HEADER_TIMEOUT_S:
        tally.oversized_late += 1
    elif raw == b"" and chunked:
        tally.oversized_reset += 1
    else:
        tally.fail(
            f"oversized (chunked={chunked}, headers sent {late:.3f} s after connecting):"
            f" {raw[:80] if raw else raw!r}"
        )


async def _stalled(host: str, port: int, i: int, tally: Tally) -> None:
    tally.stalled += 1
    body = json.dumps({"model": MODEL, "prompt": "x"}).encode()
    partial = (
        b"POST /api/generate HTTP/1.1\r\nHost: soak\r\nContent-Le"
        if i % 2 == 0
        else b"POST /api/generate HTTP/1.1\r\nHost: soak\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body[: len(body) // 2])
    )
    bound = max(HEADER_TIMEOUT_S, BODY_TIMEOUT_S) + 2.0
    try:
        async with await anyio.connect_tcp(host, port) as s:
            await s.send(partial)
            raw = await _read_all(s, bound)
    except OSError as exc:
        tally.fail(f"stalled: {type(exc).__name__} {exc}")
        return
    if raw is not None:
        tally.stalled_closed += 1
    else:
        tally.fail(f"stalled connection {i} still open after {bound:.1f}s")


async def _drive(host: str, port: int, seconds: float, tally: Tally) -> None:
    deadline = time.monotonic() + seconds
    url = f"http://{host}:{port}"

    # A well-behaved client drops an idle connection before the server's keep-alive time ends
    # (KEEP_ALIVE_S): one reused just as the proxy closes it would lose its request (a reset),
    # a race no server can remove and a POST cannot be retried through. httpx's default
    # keepalive_expiry (5 s) is longer than the proxy's keep-alive here.
    limits = httpx.Limits(keepalive_expiry=KEEP_ALIVE_S / 2)
    async with httpx.AsyncClient(
        base_url=url, timeout=30, limits=limits
    ) as h, anyio.create_task_group() as tg:

        async def loop(kind: str, n: int) -> None:
            i = n
            while time.monotonic() < deadline:
                if kind == "valid":
                    await _valid(h, i, tally)
                elif kind == "hostile":
                    await _hostile(h, i, tally)
                elif kind == "oversized":
                    await _oversized(host, port, i, tally)
                else:
                    await _stalled(host, port, i, tally)
                i += 1

        for n in range(12):
            tg.start_soon(loop, "valid", n)
        for n in range(4):
            tg.start_soon(loop, "hostile", n)
        for n in range(2):
            tg.start_soon(loop, "oversized", n)
        for n in range(6):
            tg.start_soon(loop, "stalled", n)


async def _settle(
    pid: int, fds_goal: Optional[int], limit_s: float
) -> Tuple[Optional[float], Optional[int]]:
    """The proxy's figures once its descriptors are back at ``fds_goal`` (or the limit)."""
    end = time.monotonic() + limit_s
    rss, fds = _proc_figures(pid)
    while fds is not None and fds_goal is not None and fds > fds_goal and time.monotonic() < end:
        await anyio.sleep(0.1)  # a benchmark may poll: the proxy is another process
        rss, fds = _proc_figures(pid)
    return rss, fds


async def soak(seconds: float) -> Dict[str, Any]:
    models = (
        ModelSpec(MODEL, size_gb=0.5, decode_tps=800.0, load_s=0.2, default_num_predict=6),
        ModelSpec(EMBED, size_gb=0.1, capabilities=("embedding",), embedding_length=16, load_s=0.1),
    )
    profiles = [HostProfile(f"h{i}", models, num_parallel=4) for i in (1, 2)]
    async with SimFleet(profiles, time_scale=0.01) as sim:
        argv = [sys.executable, "-m", "ollama_orchestra", "proxy", "--listen", "127.0.0.1:0"]
        for s in sim:
            argv += ["--server", f"{s.name}={s.url}*4"]
        argv += [
            "--max-body-bytes",
            str(MAX_BODY),
            "--header-timeout",
            str(HEADER_TIMEOUT_S),
            "--body-timeout",
            str(BODY_TIMEOUT_S),
            "--keep-alive-timeout",
            str(KEEP_ALIVE_S),
            "--max-connections",
            "256",
        ]
        async with await anyio.open_process(argv) as proc:
            try:
                assert proc.stdout is not None
                line = b""
                with anyio.fail_after(30):
                    while not line.endswith(b"\n"):
                        line += await proc.stdout.receive()
                url = line.decode().split()[-1]
                host, port_text = url.rsplit("/", 1)[-1].split(":")
                port = int(port_text)

                warm = Tally()
                await _drive(host, port, min(2.0, seconds / 4), warm)
                # Baseline: once the warm-up's stalled connections have surely been closed.
                await anyio.sleep(max(HEADER_TIMEOUT_S, BODY_TIMEOUT_S) + 0.5)
                base_rss, base_fds = _proc_figures(proc.pid)

                tally = Tally()
                started = time.monotonic()
                peak_rss: Optional[float] = None

                async def sample() -> None:
                    nonlocal peak_rss
                    while True:
                        rss, _ = _proc_figures(proc.pid)
                        if rss is not None:
                            peak_rss = max(peak_rss or 0.0, rss)
                        await anyio.sleep(0.25)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(sample)
                    await _drive(host, port, seconds, tally)
                    tg.cancel_scope.cancel()
                elapsed = time.monotonic() - started
                goal = base_fds + FD_TOLERANCE if base_fds is not None else None
                end_rss, end_fds = await _settle(proc.pid, goal, 10)

                async with httpx.AsyncClient(base_url=url, timeout=10) as h:
                    status = (await h.get("/status")).json()
                in_flight = {n: s["in_flight"] for n, s in status["servers"].items()}
                hosts = {
                    s.name: {"in_flight": s.state().in_flight, "queued": s.state().queued}
                    for s in sim
                }
            finally:
                proc.terminate()
                with anyio.move_on_after(10):
                    await proc.wait()
    return {
        "seconds": round(elapsed, 1),
        "tally": asdict(tally),
        "warmup": asdict(warm),
        "rss_mib": {"baseline": base_rss, "peak": peak_rss, "after": end_rss},
        "fds": {"baseline": base_fds, "after": end_fds},
        "tolerance": {"rss_mib": RSS_TOLERANCE_MIB, "fds": FD_TOLERANCE},
        "orchestra_in_flight": in_flight,
        "hosts": hosts,
    }


def checks(quick: bool) -> List[Check]:
    """The soak's figures against their goals, for ``python -m benchmarks``'s summary."""
    d = read_json("soak.json")
    if not d:
        return []
    t, rss, fds = d["tally"], d["rss_mib"], d["fds"]
    out = [
        Check(
            "soak",
            f"valid requests answered ({d['seconds']:.0f} s of mixed abuse)",
            f"{t['valid_ok']} of {t['valid']}",
            "all",
            t["valid"] > 0 and t["valid_ok"] == t["valid"],
            gated=True,
        ),
        Check(
            "soak",
            "hostile bodies (bad JSON, deep nesting, wrong types) -> 400",
            f"{t['hostile_400']} of {t['hostile']}",
            "all",
            t["hostile"] > 0 and t["hostile_400"] == t["hostile"],
            gated=True,
        ),
        Check(
            "soak",
            f"oversized bodies (> {MAX_BODY // 1024} KiB) refused: 413 (+ reset mid-upload,"
            " + headers sent late by this client: closed as stalled)",
            f"{t['oversized_413']} (+ {t['oversized_reset']}, + {t.get('oversized_late', 0)})"
            f" of {t['oversized']}",
            "all",
            t["oversized"] > 0
            and t["oversized_413"] + t["oversized_reset"] + t.get("oversized_late", 0)
            == t["oversized"],
            gated=True,
        ),
        Check(
            "soak",
            "stalled connections closed by the proxy",
            f"{t['stalled_closed']} of {t['stalled']}",
            "all",
            t["stalled"] > 0 and t["stalled_closed"] == t["stalled"],
            gated=True,
        ),
        Check(
            "soak",
            "in flight after: orchestra, hosts (in flight + queued)",
            f"{sum(d['orchestra_in_flight'].values())}, "
            f"{sum(h['in_flight'] + h['queued'] for h in d['hosts'].values())}",
            "0, 0",
            sum(d["orchestra_in_flight"].values()) == 0
            and all(h["in_flight"] == 0 and h["queued"] == 0 for h in d["hosts"].values()),
            gated=True,
        ),
    ]
    if rss["baseline"] is not None and rss["after"] is not None:
        out.append(
            Check(
                "soak",
                "proxy RSS: baseline -> peak -> after",
                f"{rss['baseline']:.0f} -> {rss['peak']:.0f} -> {rss['after']:.0f} MiB",
                f"after <= baseline + {d['tolerance']['rss_mib']:.0f} MiB",
                rss["after"] <= rss["baseline"] + d["tolerance"]["rss_mib"],
                gated=True,
            )
        )
    if fds["baseline"] is not None and fds["after"] is not None:
        out.append(
            Check(
                "soak",
                "proxy open file descriptors: baseline -> after",
                f"{fds['baseline']} -> {fds['after']}",
                f"after <= baseline + {d['tolerance']['fds']}",
                fds["after"] <= fds["baseline"] + d["tolerance"]["fds"],
                gated=True,
            )
        )
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=FULL_SECONDS, help="soak duration")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SECONDS:.0f} s (CI)")
    args = parser.parse_args(argv)
    seconds = min(args.seconds, QUICK_SECONDS) if args.quick else args.seconds
    report = anyio.run(soak, seconds)
    path = write_json("soak.json", report)
    for c in checks(args.quick):
        print(c.line())
    failures = report["tally"]["failures"]
    for f in failures[:10]:
        print(f"  failure: {f}")
    print(f"wrote {path}")
    return 0 if all(c.ok for c in checks(args.quick)) else 1


if __name__ == "__main__":
    sys.exit(main())
