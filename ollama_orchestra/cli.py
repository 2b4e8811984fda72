"""``ollama-orchestra``: status, run, proxy, sim and demo, from the command line.

Every error a person can cause (bad flags, an unreachable fleet, a bad file, a port in use)
ends in one clear line on stderr and a non-zero exit, never a traceback: exit 2 for bad input
(flags, config, DAG file), 1 for a failure at run time (a task failed, no server reachable,
an OS error), 130 when interrupted. A bug still shows its traceback.
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
from ._config import OrchestraConfig
from ._configload import env_options, parse_role_specs, parse_server_spec
from ._errors import ConfigError, DagValidationError, OrchestraError
from ._executor import load_dag
from ._extras import require_extra
from ._report import (
    Progress,
    down_cause,
    one_line,
    print_outputs,
    run_report,
    status_table,
    summary,
)
from ._version import __version__

if sys.version_info >= (3, 11):
    from builtins import BaseExceptionGroup as _BaseExceptionGroup
else:  # pragma: no cover - anyio depends on the backport there
    from exceptiongroup import BaseExceptionGroup as _BaseExceptionGroup

__all__ = ["main"]


class CliError(Exception):
    """A problem to report in one line (exit code ``code``)."""

    def __init__(self, message: str, code: int = 2) -> None:
        self.code = code
        super().__init__(message)


# -- configuration from flags ------------------------------------------------------------------


def _config(args: argparse.Namespace) -> OrchestraConfig:
    """The fleet from the flags, over a config file or the environment.

    ``--server`` replaces the servers only: the roles and the strategy still come from
    ``OLLAMA_ORCHESTRA_ROLES`` and ``OLLAMA_ORCHESTRA_STRATEGY``. ``--role`` and
    ``--strategy`` override whatever the file or the environment says.
    """
    env: Dict[str, str] = dict(os.environ)
    if args.strategy:
        env["OLLAMA_ORCHESTRA_STRATEGY"] = args.strategy  # the flag wins, even over a bad value
    flag_roles = parse_role_specs(args.role or (), field="--role")
    if args.server:
        servers = tuple(
            parse_server_spec(item, field="--server", default_name=f"server{i}")
            for i, item in enumerate(args.server)
        )
        kwargs: Dict[str, Any] = {"servers": servers, **env_options(env)}
        kwargs["roles"] = {**kwargs.get("roles", {}), **flag_roles}
        return OrchestraConfig(**kwargs)
    # (OLLAMA_ORCHESTRA_CONFIG, like --config, names a file whose strategy the flag overrides.)
    cfg = OrchestraConfig.from_file(args.config) if args.config else OrchestraConfig.from_env(env)
    changes: Dict[str, Any] = {}
    if args.strategy:
        changes["strategy"] = args.strategy
    if flag_roles:
        changes["roles"] = {**cfg.roles, **flag_roles}
    return cfg.replace(**changes) if changes else cfg


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
            + "; ".join(f"{s.name}: {down_cause(s)}" for s in snap.servers.values()),
            1,
        )
    return 0


async def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    spec = load_dag(args.file)
    config = _config(args)
    if args.output is not None:
        try:
            args.output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CliError(f"--output {args.output}: cannot create: {exc.strerror or exc}") from exc
    # With --json, stdout is the one JSON document: progress and failures go to stderr.
    log = sys.stderr if args.json else out
    async with Orchestra(config) as orch:
        progress = Progress(len(spec.tasks), log)
        t0 = anyio.current_time()
        result = await orch.run(
            list(spec.tasks),
            schedule=args.schedule or spec.schedule,
            inputs=spec.inputs,
            on_event=progress,
        )
        metrics = orch.metrics()
    if args.output is not None:
        for r in result.results:
            if r.ok and r.output is not None:
                (args.output / f"{r.id}.txt").write_text(r.output, encoding="utf-8")
    if args.json:
        json.dump(run_report(result, metrics, t0), out, indent=2)
        out.write("\n")
    else:
        if args.print_outputs:
            print_outputs(result, out)
        summary(result, metrics, out)
    failed = [r for r in result.results if not r.ok]
    for r in failed:
        log.write(f"{r.status}: {r.id}: {one_line(r.error_message)}\n")
    return 1 if failed else 0


def _sole_error(exc: BaseException) -> BaseException:
    """The one error inside (nested) exception groups of one, else ``exc`` itself."""
    inner = getattr(exc, "exceptions", None)
    while isinstance(inner, (list, tuple)) and len(inner) == 1:
        exc = inner[0]
        inner = getattr(exc, "exceptions", None)
    return exc


async def cmd_proxy(args: argparse.Namespace, out: TextIO) -> int:
    require_extra("proxy", "ollama-orchestra proxy")
    import signal

    from ._proxy import ProxyLimits, serve_proxy
    from ._serving import is_loopback

    host, sep, port_text = str(args.listen).rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise CliError(f"--listen {args.listen!r}: expected HOST:PORT")
    if not is_loopback(host) and not args.allow_non_loopback:
        raise CliError(
            f"--listen {args.listen}: not a loopback address; anyone who can reach it can use "
            "the fleet. Pass --allow-non-loopback (and --token) to expose it"
        )
    # The environment is the recommended way: a --token flag is visible in `ps`.
    token = args.token
    source = "--token"
    if token is None:
        token = os.environ.get("OLLAMA_ORCHESTRA_PROXY_TOKEN") or None
        source = "OLLAMA_ORCHESTRA_PROXY_TOKEN"
    if token is not None and not token.strip():
        raise CliError(f"{source}: the token must not be blank")
    defaults = ProxyLimits()
    limits = ProxyLimits(
        max_body_bytes=_or(args.max_body_bytes, defaults.max_body_bytes),
        header_timeout_s=_or(args.header_timeout, defaults.header_timeout_s),
        body_timeout_s=_or(args.body_timeout, defaults.body_timeout_s),
        keep_alive_s=_or(args.keep_alive_timeout, defaults.keep_alive_s),
        max_connections=_or(args.max_connections, defaults.max_connections),
    )
    config = _config(args)
    serve = partial(serve_proxy, allow_non_loopback=True, limits=limits)
    try:
        async with anyio.create_task_group() as tg:
            url = await tg.start(serve, config, host, int(port_text), token)
            out.write(f"proxy listening on {url}\n")
            out.flush()
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            tg.cancel_scope.cancel()
    except Exception as exc:
        # A failure to start (a port in use, ...) is one error in the task group's group.
        sole = _sole_error(exc)
        if sole is exc:
            raise
        raise sole from None
    return 0


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def cmd_sim(args: argparse.Namespace, rest: List[str]) -> int:
    from .sim.__main__ import main as sim_main

    return sim_main(rest, prog="ollama-orchestra sim")


async def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    require_extra("sim", "ollama-orchestra demo")
    scale = args.time_scale
    if not scale > 0:
        raise CliError(f"--time-scale {scale!r}: must be > 0")
    from ._demo import run_demo

    return await run_demo(out, scale, args.strategy)


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
            "--role",
            action="append",
            metavar="ROLE=MODEL",
            help="a role (repeatable); overrides the config's or OLLAMA_ORCHESTRA_ROLES's",
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
    shown = rn.add_mutually_exclusive_group()
    shown.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document (every task's status, output, server, timings, error)"
        " on stdout; progress goes to stderr",
    )
    shown.add_argument(
        "--print-outputs", action="store_true", help="print each task's output after the run"
    )
    rn.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help="write each successful task's output to DIR/ID.txt",
    )
    fleet_flags(rn)
    px = sub.add_parser("proxy", help="serve Ollama's API for the whole fleet (drop-in)")
    px.add_argument("--listen", default="127.0.0.1:11435", metavar="HOST:PORT")
    px.add_argument(
        "--token",
        help="require 'Authorization: Bearer TOKEN'; prefer $OLLAMA_ORCHESTRA_PROXY_TOKEN "
        "(the default), as a flag is visible to other users in `ps`",
    )
    px.add_argument(
        "--max-body-bytes", type=int, metavar="N", help="largest request body (default 8 MiB)"
    )
    px.add_argument(
        "--header-timeout", type=float, metavar="S", help="time to send the headers (10 s)"
    )
    px.add_argument("--body-timeout", type=float, metavar="S", help="time to send a body (30 s)")
    px.add_argument(
        "--keep-alive-timeout", type=float, metavar="S", help="idle connection life (30 s)"
    )
    px.add_argument(
        "--max-connections", type=int, metavar="N", help="open connections before 503 (512)"
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
        "--time-scale", type=float, default=0.05, help="real seconds per simulated second"
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
    except BaseException as exc:
        failure = _expected_failure(exc)
        if failure is None:
            raise  # a bug: its traceback is what a report needs
        message, code = failure
        if message:
            print(f"ollama-orchestra: {message}", file=sys.stderr)
        return code


def _expected_failure(exc: BaseException) -> Optional[Tuple[str, int]]:
    """The one line to print and the exit code for a failure a person can cause; ``None``
    for anything else (a bug).

    anyio's task groups wrap errors in exception groups: a group counts as expected when
    everything in it is, and is reported by its first error.
    """
    if isinstance(exc, _BaseExceptionGroup):
        failures = [_expected_failure(e) for e in exc.exceptions]
        if not failures or any(f is None for f in failures):
            return None
        found = [f for f in failures if f is not None]
        messages = list(dict.fromkeys(m for m, _ in found if m))
        if len(messages) > 1:
            return f"{messages[0]} (and {len(messages) - 1} more)", found[0][1]
        return (messages[0] if messages else ""), found[0][1]
    if isinstance(exc, KeyboardInterrupt):
        return "", 130
    code: Optional[int] = None
    if isinstance(exc, CliError):
        code = exc.code
    elif isinstance(exc, (ConfigError, DagValidationError)):
        code = 2
    elif isinstance(exc, (OrchestraError, OSError)):
        code = 1
    return None if code is None else (one_line(str(exc)) or type(exc).__name__, code)
