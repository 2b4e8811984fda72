"""``python -m ollama_orchestra.sim``: serve a simulated Ollama fleet until interrupted.

With no arguments it serves the two-host preset (``ollama01``, ``ollama02``) and prints one
``NAME URL`` line per host. ``--config FILE`` reads hosts from TOML::

    time_scale = 0.1
    [[hosts]]
    name = "gpu1"
    num_parallel = 2
    [[hosts.models]]
    name = "qwen2.5:14b"
    size_gb = 9
    decode_tps = 70
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence

import anyio

from .._errors import MissingExtra
from .._extras import require_extra
from ._errors import SimConfigError
from ._serve import SimFleet, SimServer
from ._spec import Faults, HostProfile, preset_fleet, profile_from_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Serve a simulated Ollama fleet on loopback.",
    )
    p.add_argument(
        "--config", type=Path, help="TOML file with [[hosts]] (default: the two-host preset)"
    )
    p.add_argument(
        "--time-scale",
        type=float,
        default=None,
        help="real seconds per simulated second (default 1.0)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)"
    )
    p.add_argument(
        "--port-base",
        type=int,
        default=0,
        help="first port; hosts use consecutive ports (default: any free)",
    )
    p.add_argument(
        "--addresses",
        choices=("ports", "loopback"),
        default="ports",
        help="one address per host (127.0.0.N) or one port per host",
    )
    p.add_argument("--seed", type=int, default=0)
    return p


class _ArgError(Exception):
    pass


def _load(path: Path) -> tuple:  # type: ignore[type-arg]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SimConfigError(
            "--config", str(path), f"cannot be read: {exc.strerror or exc}"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise SimConfigError("--config", str(path), f"is not valid TOML: {exc}") from exc
    for key in data:
        if key not in ("hosts", "time_scale"):
            raise SimConfigError(
                f"{path}: {key}", data[key], "unknown key; expected 'hosts' or 'time_scale'"
            )
    hosts = data.get("hosts")
    if not isinstance(hosts, list) or not hosts:
        raise SimConfigError(
            f"{path}: hosts", hosts, "must be a non-empty list of [[hosts]] tables"
        )
    profiles = tuple(profile_from_dict(h, where=f"{path}: hosts[{i}]") for i, h in enumerate(hosts))
    return profiles, data.get("time_scale")


async def _serve(
    profiles: Sequence[HostProfile], args: argparse.Namespace, time_scale: float
) -> None:
    if args.addresses == "ports" and args.host != "127.0.0.1":
        servers = [
            SimServer(
                p,
                host=args.host,
                port=(args.port_base + i) if args.port_base else 0,
                time_scale=time_scale,
                seed=args.seed + i,
            )
            for i, p in enumerate(profiles)
        ]
        fleet = SimFleet(profiles, time_scale=time_scale, seed=args.seed)
        fleet.servers = tuple(servers)
    else:
        fleet = SimFleet(
            profiles,
            time_scale=time_scale,
            seed=args.seed,
            addresses=args.addresses,
            port_base=args.port_base,
        )
    async with fleet:
        for server in fleet:
            print(f"{server.name} {server.url}", flush=True)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break


async def _serve_one(spec_json: str) -> None:
    spec = json.loads(spec_json)
    profile = profile_from_dict(spec["profile"])
    faults = Faults.from_mapping(spec.get("faults") or {})
    async with SimServer(
        profile,
        host=spec["host"],
        port=spec["port"],
        time_scale=spec["time_scale"],
        seed=spec["seed"],
        faults=faults,
    ):
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break


def main(argv: Optional[List[str]] = None, prog: str = "python -m ollama_orchestra.sim") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_serve-one"]:
        anyio.run(_serve_one, argv[1])
        return 0
    parser = _parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        require_extra("sim", prog)
        profiles: Any = preset_fleet()
        time_scale = 1.0
        if args.config is not None:
            profiles, file_scale = _load(args.config)
            if file_scale is not None:
                time_scale = file_scale
        if args.time_scale is not None:
            time_scale = args.time_scale
        if not (isinstance(time_scale, (int, float)) and time_scale > 0):
            raise SimConfigError("--time-scale", time_scale, "must be a number > 0")
        if not 0 <= args.port_base <= 65535:
            raise SimConfigError("--port-base", args.port_base, "must be in 0..65535")
        anyio.run(_serve, profiles, args, float(time_scale))
    except SimConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MissingExtra as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
