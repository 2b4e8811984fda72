"""The coordinated balancer without Redis: local limits, in-flight counts, a refused slot."""

from __future__ import annotations

from typing import List, Optional

import anyio
import pytest

from ollama_orchestra import Coordination, OrchestraConfig, Server
from ollama_orchestra._balancer import Lease, LoadBalancer
from ollama_orchestra._coordination import CoordinatedBalancer, Waiter, make_balancer
from ollama_orchestra._state import FleetState

M = "m:latest"


def _balancer(slots: int, share: float) -> CoordinatedBalancer:
    servers = (Server("s", "http://127.0.0.1:11434", max_concurrency=slots),)
    config = OrchestraConfig(
        servers=servers,
        coordination=Coordination("redis://127.0.0.1:1/0", fallback_share=share),
    )
    state = FleetState(servers)
    state.probe_succeeded("s", version="0.12.0", models={M: 1}, loaded=[])
    lb = make_balancer(config, state)
    assert isinstance(lb, CoordinatedBalancer)
    return lb


class TestMakeBalancer:
    """Without coordination the orchestra's balancer is the plain, in-process one."""

    def test_plain(self) -> None:
        config = OrchestraConfig(servers=(Server("s", "http://127.0.0.1:1"),))
        lb = make_balancer(config, FleetState(config.servers))
        assert type(lb) is LoadBalancer


class TestLocalLimits:
    """Without an answer from Redis a process uses ceil(share * slots) of each server."""

    async def test_share_of_slots(self) -> None:
        lb = _balancer(4, 0.5)
        a = await lb.acquire(M)
        b = await lb.acquire(M)
        assert lb.in_use("s") == 2  # its own leases, not the slots kept back
        with anyio.move_on_after(0.05) as scope:
            await lb.acquire(M)
        assert scope.cancel_called
        assert lb.waiting == 0
        a.release()
        c = await lb.acquire(M)
        for lease in (b, c):
            lease.release()
        assert lb.in_use("s") == 0

    @pytest.mark.parametrize(("slots", "share", "limit"), [(1, 0.1, 1), (3, 0.5, 2), (2, 1, 2)])
    async def test_rounding_up(self, slots: int, share: float, limit: int) -> None:
        lb = _balancer(slots, share)
        held = [await lb.acquire(M) for _ in range(limit)]
        assert lb.in_use("s") == limit
        with anyio.move_on_after(0.05) as scope:
            await lb.acquire(M)
        assert scope.cancel_called
        for lease in held:
            lease.release()


class TestRefused:
    """A request whose slot Redis refuses gives the local grant back and queues again first."""

    async def test_refused_waiter_stays_first(self) -> None:
        lb = _balancer(1, 1.0)
        shared = lb.shared
        holder = await lb.acquire(M)
        other = Lease(holder.server, "", 0.0, 0.0, None, 0.0)  # another process's slot
        confirm = shared.confirm
        refused: List[str] = []
        order: List[str] = []

        async def refuse_first(lease: Lease, waiter: Optional[Waiter] = None) -> bool:
            if not refused:
                refused.append("first")
                shared.take("s", other)  # another process took it meanwhile
                return False
            return await confirm(lease, waiter)

        shared.confirm = refuse_first  # type: ignore[method-assign]

        async def wait(name: str) -> None:
            lease = await lb.acquire(M)
            order.append(name)
            await anyio.lowlevel.checkpoint()
            lease.release()

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, "first")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(wait, "second")
            await anyio.wait_all_tasks_blocked()
            holder.release()  # "first" is granted, refused, and queues again
            await anyio.wait_all_tasks_blocked()
            assert refused == ["first"] and order == []
            assert lb.waiting == 2
            shared.give_back("s", other)
            lb._dispatch()
        assert order == ["first", "second"]
        assert lb.in_use("s") == 0
