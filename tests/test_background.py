"""Background services: a crash after start is logged, never lost."""

from __future__ import annotations

import logging

import anyio
import pytest
from anyio.abc import TaskStatus

from ollama_orchestra._background import Background


class TestCrashAfterStart:
    async def test_crash_is_logged_at_error(self, caplog: pytest.LogCaptureFixture) -> None:
        """A service that fails after reporting started is logged at ERROR with its traceback."""
        crash, crashed = anyio.Event(), anyio.Event()

        async def service(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            await crash.wait()
            crashed.set()
            raise RuntimeError("service bug")

        caplog.set_level(logging.ERROR, logger="ollama_orchestra")
        background = Background()
        await background.start(service)
        crash.set()
        await crashed.wait()
        await background.stop()
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and errors[0].exc_info is not None
        assert "RuntimeError: service bug" in caplog.text  # the traceback, group included
