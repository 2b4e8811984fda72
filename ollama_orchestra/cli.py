"""``ollama-orchestra``: status, run, proxy, sim and demo, from the command line.

Every error a person can cause (bad flags, an unreachable fleet, a bad file) ends in one clear
line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

import anyio

from ._client import Orchestra
from ._config import OrchestraConfig, Server
from ._errors import ConfigError, DagValidationError, OrchestraError
from ._executor import DagResult, Task, TaskEvent, load_dag
from ._extras import require_extra
from ._metrics import MetricsSnapshot
from ._state import FleetSnapshot
from ._version import __version__

__all__ = ["main"]


class CliError(Exception):
    """A problem to report in one line (exit code ``code``)."""

    def __init__(self, message: str, code: int = 2) -> None:
        self.code = code
        super().__init__(message)


# -- configuration from flags ------------------------------------------------------------------


def _config(args: argparse.Namespace) -> OrchestraConfig:
    if args.server:
        servers = []
        for i, item in enumerate(args.server):
            name, sep, rest = item.partition("=")
            if not sep:
                raise CliError(f"--server {item!r}: expected NAME=URL[*SLOTS]")
            url, star, slots = rest.partition("*")
            try:
                conc = int(slots) if star else 1
            except ValueError:
                raise CliError(f"--server {item!r}: slots after '*' must be an integer") from None
            servers.append(Server(name or f"server{i}", url, max_concurrency=conc))
        kwargs: Dict[str, Any] = {"servers": tuple(servers)}
        if args.strategy:
            kwargs["strategy"] = args.strategy
        return OrchestraConfig(**kwargs)
    cfg = OrchestraConfig.from_file(args.config) if args.config else OrchestraConfig.from_env()
    return cfg.replace(strategy=args.strategy) if args.strategy else cfg


# -- tables ------------------------------------------------------------------------------------


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")


def status_table(snap: FleetSnapshot, out: TextIO) -> None:
    rows = [
        [
            "server",
            "health",
            "version",
            "models",
            "loaded",
            "slots",
            "in-flight",
            "latency",
            "breaker",
        ]
    ]
    for s in snap.servers.values():
        latency = (
            ", ".join(f"{m.split(':')[0]} {v:.2f}s" for m, v in sorted(s.latency_s.items())) or "-"
        )
        rows.append(
            [
                s.name,
                "up" if s.healthy else "DOWN",
                s.version or "-",
                ", ".join(s.models) or "-",
                ", ".join(m.name for m in s.loaded) or "-",
                str(s.slots),
                str(s.in_flight),
                latency,
                s.breaker,
            ]
        )
    _table(rows, out)


def metrics_table(m: MetricsSnapshot, counts: Dict[str, int], out: TextIO) -> None:
    rows = [["server", "tasks", "utilization", "share", "fair share", "tokens/s"]]
    for s in m.servers.values():
        rows.append(
            [
                s.name,
                str(counts.get(s.name, 0)),
                f"{s.utilization:.0%}",
                f"{s.share:.0%}",
                f"{s.fair_share:.0%}",
                f"{s.tokens_per_s:.0f}",
            ]
        )
    _table(rows, out)


# -- progress ----------------------------------------------------------------------------------


class Progress:
    """A live progress bar on a terminal; plain lines otherwise (no dependency)."""

    def __init__(self, total: int, out: TextIO) -> None:
        self.total = total
        self.out = out
        self.tty = out.isatty()
        self.done = 0
        self.running = 0
        self.failed = 0

    def __call__(self, event: TaskEvent) -> None:
        if event.kind == "started":
            self.running += 1
        elif event.kind in ("finished", "failed", "skipped", "cancelled"):
            self.done += 1
            if event.kind == "finished" or event.kind == "failed":
                self.running = max(0, self.running - 1)
            if event.kind != "finished":
                self.failed += 1
        else:
            return
        if self.tty:
            width = 30
            filled = int(width * self.done / max(1, self.total))
            bar = "#" * filled + "." * (width - filled)
            self.out.write(
                f"\r[{bar}] {self.done}/{self.total} done, {self.running} running, {self.failed} not ok"
            )
            if self.done == self.total:
                self.out.write("\n")
        else:
            where = (
                f" on {event.result.server}"
                if event.result is not None and event.result.server
                else ""
            )
            self.out.write(f"{event.kind:9} {event.task_id}{where}\n")
        self.out.flush()


# -- commands ----------------------------------------------------------------------------------


async def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    config = _config(args)
    async with Orchestra(config) as orch:
        snap = orch.state()
    if args.json:
        json.dump(snap.to_dict()["servers"], out, indent=2)
        out.write("\n")
    else:
        status_table(snap, out)
    if not snap.healthy:
        raise CliError(
            "no server is reachable: "
            + "; ".join(f"{s.name}: {s.last_error}" for s in snap.servers.values()),
            1,
        )
    return 0


async def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    spec = load_dag(args.file)
    config = _config(args)
    async with Orchestra(config) as orch:
        progress = Progress(len(spec.tasks), out)
        result = await orch.run(
            list(spec.tasks),
            schedule=args.schedule or spec.schedule,
            inputs=spec.inputs,
            on_event=progress,
        )
        metrics = orch.metrics()
    _summary(result, metrics, out)
    failed = [r for r in result.results if not r.ok]
    for r in failed:
        out.write(f"{r.status}: {r.id}: {r.error_message}\n")
    return 1 if failed else 0


def _summary(
    result: DagResult, metrics: MetricsSnapshot, out: TextIO, *, scale: float = 1.0
) -> None:
    counts: Dict[str, int] = {}
    for r in result.results:
        if r.server:
            counts[r.server] = counts.get(r.server, 0) + 1
    out.write("\n")
    metrics_table(metrics, counts, out)
    ok = sum(1 for r in result.results if r.ok)
    out.write(
        f"\n{ok}/{len(result.results)} tasks ok, makespan {result.makespan_s / scale:.2f}s, imbalance {metrics.imbalance:.1%}\n"
    )


async def cmd_proxy(args: argparse.Namespace, out: TextIO) -> int:
    require_extra("proxy", "ollama-orchestra proxy")
    import signal

    from ._proxy import _is_loopback, serve_proxy

    host, sep, port_text = str(args.listen).rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise CliError(f"--listen {args.listen!r}: expected HOST:PORT")
    if not _is_loopback(host) and not args.allow_non_loopback:
        raise CliError(
            f"--listen {args.listen}: not a loopback address; anyone who can reach it can use "
            "the fleet. Pass --allow-non-loopback (and --token) to expose it"
        )
    config = _config(args)
    token = args.token or os.environ.get("OLLAMA_ORCHESTRA_PROXY_TOKEN") or None
    async with anyio.create_task_group() as tg:
        url = await tg.start(
            partial(serve_proxy, allow_non_loopback=True), config, host, int(port_text), token
        )
        out.write(f"proxy listening on {url}\n")
        out.flush()
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        tg.cancel_scope.cancel()
    return 0


def cmd_sim(args: argparse.Namespace, rest: List[str]) -> int:
    from .sim.__main__ import main as sim_main

    return sim_main(rest, prog="ollama-orchestra sim")


# -- the demo ----------------------------------------------------------------------------------


PIPELINES = ("auth", "sync", "export")


def pipeline_dag(features: Sequence[str] = PIPELINES, parts: int = 4) -> List[Task]:
    """The user's pipeline, once per feature: plan, parallel coding, QA of each part, debugging.

    The features are independent of each other, as a team's pipelines are; within one, each
    step waits for the step before.
    """
    tasks: List[Task] = []
    for f in features:
        tasks.append(
            Task(
                f"{f}_plan",
                model="planning",
                prompt=f"Plan the {f} feature of {{goal}}",
                options={"num_predict": 300},
            )
        )
        for i in range(parts):
            code, qa = f"{f}_code_{i}", f"{f}_qa_{i}"
            tasks.append(
                Task(
                    code,
                    model="coding",
                    prompt=f"Implement part {i}:\n{{{f}_plan}}",
                    depends_on=[f"{f}_plan"],
                    options={"num_predict": 400},
                )
            )
            tasks.append(
                Task(
                    qa,
                    model="qa",
                    prompt=f"Review part {i}:\n{{{code}}}",
                    depends_on=[code],
                    options={"num_predict": 150},
                )
            )
        qa_ids = [f"{f}_qa_{i}" for i in range(parts)]
        tasks.append(
            Task(
                f"{f}_debug",
                model="debugging",
                prompt="Fix what QA found:\n" + "\n".join("{" + q + "}" for q in qa_ids),
                depends_on=qa_ids,
                options={"num_predict": 300},
            )
        )
    return tasks


ROLES = {
    "planning": "qwen2.5:14b",
    "coding": "qwen2.5-coder:32b",
    "qa": "qwen2.5:14b",
    "debugging": "qwen2.5-coder:32b",
}
#: What each host keeps loaded in steady state (ollama01 has room for one large model).
WARM = {"ollama01": ("qwen2.5-coder:32b",), "ollama02": ("qwen2.5:14b", "qwen2.5-coder:32b")}


async def _demo_run(
    names: Sequence[str], time_scale: float, strategy: str
) -> Tuple[DagResult, MetricsSnapshot]:
    import httpx

    from .sim import SimFleet

    async with SimFleet.preset(time_scale=time_scale, mode="subprocess") as fleet:
        async with httpx.AsyncClient(timeout=600) as http:
            for s in fleet.servers:
                for model in WARM.get(s.name, ()):
                    r = await http.post(
                        s.url + "/api/generate", json={"model": model, "keep_alive": -1}
                    )
                    r.raise_for_status()
        servers = tuple(
            Server(s.name, s.url, max_concurrency=s.profile.num_parallel, weight=s.profile.speed)
            for s in fleet.servers
            if s.name in names
        )
        config = OrchestraConfig(servers=servers, roles=ROLES, strategy=strategy)
        async with Orchestra(config) as orch:
            orch.reset_metrics()
            result = await orch.run(pipeline_dag(), inputs={"goal": "a CLI todo app with sync"})
            return result, orch.metrics()


async def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    require_extra("sim", "ollama-orchestra demo")
    scale = args.time_scale
    if not scale > 0:
        raise CliError(f"--time-scale {scale!r}: must be > 0")
    out.write(
        "Simulated fleet: ollama01 (24 GB-class: slower, 2 slots, one large model at a time)\n"
    )
    out.write("                 ollama02 (80 GB-class: 1.5x faster, 4 slots, every model loaded)\n")
    out.write(
        f"Work: {len(PIPELINES)} feature pipelines, each plan -> 4 coding tasks -> QA of each -> debugging ({len(pipeline_dag())} tasks)\n"
    )
    out.write(f"time_scale={scale}: durations below are simulated seconds\n\n")
    out.write("1) today's setup: everything on ollama02\n")
    one, _ = await _demo_run(["ollama02"], scale, args.strategy)
    out.write(
        f"   makespan {one.makespan_s / scale:,.1f}s, {sum(r.ok for r in one.results)}/{len(one.results)} tasks ok\n\n"
    )
    out.write(f"2) the orchestra on ollama01 + ollama02 (strategy {args.strategy})\n")
    both, metrics = await _demo_run(["ollama01", "ollama02"], scale, args.strategy)
    out.write(
        f"   makespan {both.makespan_s / scale:,.1f}s, {sum(r.ok for r in both.results)}/{len(both.results)} tasks ok\n"
    )
    _summary(both, metrics, out, scale=scale)
    speedup = one.makespan_s / both.makespan_s if both.makespan_s else 0.0
    out.write(f"\nspeed-up over ollama02 alone: {speedup:.2f}x\n")
    util = ", ".join(f"{s.name} {s.utilization:.0%}" for s in metrics.servers.values())
    out.write(f"utilization: {util}; imbalance {metrics.imbalance:.1%}\n")
    bound = _capacity_bound()
    out.write(
        f"(the fleet's decode capacity is {bound:.2f}x ollama02's alone: the most any balancer can gain here)\n"
    )
    return 0 if one.ok and both.ok else 1


def _capacity_bound() -> float:
    from .sim import aggregate_speedup, preset_fleet

    def capacity(p: Any) -> float:
        return float(p.speed * aggregate_speedup(p.num_parallel))

    h1, h2 = preset_fleet()
    return (capacity(h1) + capacity(h2)) / capacity(h2)


# -- entry point -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ollama-orchestra", description="Spread LLM work across a fleet of Ollama servers."
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def fleet_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--config", type=Path, help="TOML config file (default: OLLAMA_ORCHESTRA_* environment)"
        )
        sp.add_argument(
            "--server",
            action="append",
            metavar="NAME=URL[*SLOTS]",
            help="a server (repeatable); overrides --config",
        )
        sp.add_argument(
            "--strategy", help="round_robin, least_loaded, weighted, model_aware or hybrid"
        )

    st = sub.add_parser("status", help="probe the servers and show their state")
    fleet_flags(st)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    rn = sub.add_parser("run", help="run a DAG file (TOML or JSON) on the fleet")
    rn.add_argument("file", type=Path)
    rn.add_argument("--schedule", choices=("eager", "waves", "sequential"))
    fleet_flags(rn)
    px = sub.add_parser("proxy", help="serve Ollama's API for the whole fleet (drop-in)")
    px.add_argument("--listen", default="127.0.0.1:11435", metavar="HOST:PORT")
    px.add_argument(
        "--token",
        help="require 'Authorization: Bearer TOKEN' (default: $OLLAMA_ORCHESTRA_PROXY_TOKEN)",
    )
    px.add_argument(
        "--allow-non-loopback", action="store_true", help="allow binding a non-loopback address"
    )
    fleet_flags(px)
    sub.add_parser(
        "sim",
        help="serve a simulated Ollama fleet (see: ollama-orchestra sim --help)",
        add_help=False,
    )
    dm = sub.add_parser("demo", help="the pipeline on ollama02 alone, then on the simulated fleet")
    dm.add_argument(
        "--time-scale", type=float, default=0.02, help="real seconds per simulated second"
    )
    dm.add_argument("--strategy", default="hybrid")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sim"]:
        return cmd_sim(argparse.Namespace(), argv[1:])
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    out = sys.stdout
    commands = {"status": cmd_status, "run": cmd_run, "proxy": cmd_proxy, "demo": cmd_demo}
    try:
        return int(anyio.run(commands[args.command], args, out))
    except CliError as exc:
        print(f"ollama-orchestra: {exc}", file=sys.stderr)
        return exc.code
    except (ConfigError, DagValidationError) as exc:
        print(f"ollama-orchestra: {exc}", file=sys.stderr)
        return 2
    except OrchestraError as exc:
        print(f"ollama-orchestra: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
