"""A stream that breaks mid-answer continues on another host, the partial answer as prefill."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, AsyncIterator, Dict, List, Optional

import anyio
import ollama
import pytest

from ollama_orchestra import (
    ChatChunk,
    ConfigError,
    Orchestra,
    RetryPolicy,
    StreamInterrupted,
    Timeouts,
)
from ollama_orchestra._continuation import Resume, render_simple
from ollama_orchestra._proxy import serve_proxy
from ollama_orchestra.sim import Faults, SimFleet
from ollama_orchestra.sim._prompt import render_generate, tokenize

from .conftest import TINY, config_for, fleet, tiny_profile

LONG = {"num_predict": 60}
#: Kill tests: real time runs at this share of simulated time, so that a 60-token answer
#: (0.15 s simulated at 400 tokens/s) is still streaming when the host is killed.
SLOW = 0.5
#: 1000 tokens at 400 tokens/s, 2.5 s simulated: about 1.2 s real at SLOW.
VERY_LONG = {"num_predict": 200}
MSGS = [{"role": "user", "content": "tell me a long story"}]


def pair(num_parallel: int = 2, time_scale: float = 0.01) -> SimFleet:
    return fleet(
        [
            tiny_profile("h1", num_parallel=num_parallel),
            tiny_profile("h2", num_parallel=num_parallel),
        ]
    )


@contextlib.asynccontextmanager
async def proxied(orch: Orchestra) -> AsyncIterator[str]:
    async with anyio.create_task_group() as tg:
        url: str = await tg.start(serve_proxy, orch, "127.0.0.1", 0, None)
        yield url
        tg.cancel_scope.cancel()


async def slowed(sim: SimFleet) -> SimFleet:
    """Every host decodes slowly: a stream is still running when the test kills its host."""
    for host in sim.servers:
        await host.set_faults(Faults(slow=1000))
    return sim


async def kill(sim: SimFleet, name: str) -> None:
    """Kill host ``name``; the others back to full speed (the continuation is quick)."""
    for host in sim.servers:
        if host.name != name:
            await host.set_faults(Faults())
    await sim[name].kill()


class Gate:
    """Set ``all_in`` once every stream has yielded a few chunks (they keep reading)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.arrived = 0
        self.all_in = anyio.Event()

    def arrive(self) -> None:
        self.arrived += 1
        if self.arrived == self.n:
            self.all_in.set()


class TestKillMidStream:
    @pytest.mark.parametrize("how", ["kill", "reset", "error-line"])
    async def test_fifty_streams_complete_when_a_host_dies(self, how: str) -> None:
        """50 streams; a host dies (or breaks them) mid-answer: every stream completes."""
        n = 50
        async with pair(num_parallel=n) as sim, Orchestra(
            config_for(sim, strategy="round_robin")
        ) as orch:
            # h1 decodes slowly, so that its streams are still running when it is killed;
            # or it breaks every stream after 5 chunks (a reset, an error line).
            faults = {
                "kill": Faults(slow=300),
                "reset": Faults(reset_after_chunks=5),
                "error-line": Faults(stream_error_after_chunks=5),
            }[how]
            await sim["h1"].set_faults(faults)
            gate = Gate(n)
            streams: List[List[ChatChunk]] = [[] for _ in range(n)]

            async def one(i: int) -> None:
                msgs = [{"role": "user", "content": f"story {i}"}]
                async for chunk in orch.chat_stream(TINY, msgs, options=VERY_LONG):
                    streams[i].append(chunk)
                    if len(streams[i]) == 3:
                        gate.arrive()

            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(one, i)
                await gate.all_in.wait()
                if how == "kill":
                    await sim["h1"].kill()
            snap = orch.metrics()
        continued = 0
        for chunks in streams:
            final = chunks[-1]
            assert final.done and sum(1 for c in chunks if c.done) == 1
            if chunks[0].server == "h2":
                assert not final.continuations
                continue
            continued += 1
            (record,) = final.continuations
            assert (record.broken, record.server) == ("h1", "h2")
            before = [c for c in chunks if c.server == "h1"]
            after = [c for c in chunks[:-1] if c.server == "h2"]
            assert chunks[: len(before)] == before  # one switch: no interleaving
            assert record.at_token == len(before) >= 3
            assert record.at_char == len("".join(c.text for c in before))
            # The stream's eval_count adds both parts: every answer chunk counted once.
            assert final.eval_count == len(before) + len(after)
        assert continued > 0
        assert snap.continuations == {"h1": continued}
        assert snap.tokens_salvaged == sum(
            c[-1].continuations[0].at_token for c in streams if c[-1].continuations
        )
        assert 0 < snap.continuation_p50_s <= snap.continuation_p95_s

    async def test_continuation_text_is_what_the_new_host_answers(self) -> None:
        """The text after the break is exactly the new host's answer to the prefilled chat."""
        async with pair() as sim, Orchestra(config_for(sim)) as orch:
            await slowed(sim)
            chunks: List[ChatChunk] = []
            async for chunk in orch.chat_stream(TINY, MSGS, options=LONG):
                chunks.append(chunk)
                if len(chunks) == 4:
                    await kill(sim, chunk.server)
            broken = chunks[0].server
            other = "h2" if broken == "h1" else "h1"
            partial = "".join(c.text for c in chunks if c.server == broken)
            rest = "".join(c.text for c in chunks if c.server == other)
            sent = [r for r in sim[other].requests if r.route == "/api/chat"][-1]
            assert sent.messages is not None
            assert sent.messages[-1] == {"role": "assistant", "content": partial}
            done = sum(1 for c in chunks if c.server == broken)
            assert sent.options["num_predict"] == LONG["num_predict"] - done
            again = await orch.chat(
                TINY,
                [*MSGS, {"role": "assistant", "content": partial}],
                options={"num_predict": LONG["num_predict"] - done},
            )
            assert again.message["content"] == rest
            assert chunks[-1].continuations[0].at_token == done >= 4

    async def test_collected_answer_is_continued(self) -> None:
        """stream=False: an answer cut mid-way is continued elsewhere, not restarted."""
        async with pair() as sim, Orchestra(config_for(sim, strategy="round_robin")) as orch:
            await sim["h1"].set_faults(Faults(reset_after_chunks=5))
            answers = [await orch.chat(TINY, MSGS, options=LONG) for _ in range(4)]
        cut = [a for a in answers if a.continuations]
        assert cut and all(a.done for a in answers)
        for a in cut:
            (record,) = a.continuations
            assert (record.broken, record.server, record.at_token) == ("h1", "h2", 5)
            assert a.server == "h2" and a.eval_count == LONG["num_predict"]

    async def test_collected_answer_not_continuable_is_retried_whole(self) -> None:
        """stream=False with a format: not continued, retried whole elsewhere as before."""
        async with pair() as sim, Orchestra(config_for(sim, strategy="round_robin")) as orch:
            await sim["h1"].set_faults(Faults(reset_after_chunks=5))
            answers = [await orch.chat(TINY, MSGS, format="json", options=LONG) for _ in range(4)]
        assert all(a.done and not a.continuations for a in answers)
        assert all(a.server == "h2" for a in answers)
        assert any(a.attempts == 2 for a in answers)

    async def test_through_the_proxy_with_the_official_client(self) -> None:
        """A proxy client sees one unbroken NDJSON stream while a host dies under it."""
        n = 50
        async with pair(num_parallel=n, time_scale=SLOW) as sim, Orchestra(
            config_for(sim, strategy="round_robin")
        ) as orch, proxied(orch) as url:
            # Every stream on h1 breaks mid-answer (the simulator streams a 1000-token
            # answer faster than 50 consumers can be gated before a kill).
            await sim["h1"].set_faults(Faults(slow=300))  # still streaming when killed
            gate = Gate(n)
            texts: List[str] = ["" for _ in range(n)]
            counts: List[int] = [0] * n
            finals: List[Any] = [None] * n
            client = ollama.AsyncClient(host=url)
            try:

                async def one(i: int) -> None:
                    seen = 0
                    stream = await client.chat(
                        TINY, [{"role": "user", "content": f"p{i}"}], options=VERY_LONG, stream=True
                    )
                    async for part in stream:
                        texts[i] += part.message.content or ""
                        seen += 1
                        counts[i] += 0 if part.done else 1
                        if part.done:
                            finals[i] = part
                        if seen == 3:
                            gate.arrive()

                async with anyio.create_task_group() as tg:
                    for i in range(n):
                        tg.start_soon(one, i)
                    await gate.all_in.wait()
                    await sim["h1"].kill()
            finally:
                await client._client.aclose()
            assert all(f is not None and f.done for f in finals)
            # One token a chunk: the summed eval_count matches the chunks received, so no
            # chunk was repeated or lost across the continuation.
            assert [f.eval_count for f in finals] == counts
            assert orch.metrics().continuations.get("h1", 0) == n // 2

    async def test_silent_host_is_continued(self) -> None:
        """A host silent mid-answer past read_s: the stream continues elsewhere."""
        async with pair() as sim, Orchestra(
            config_for(sim, timeouts=Timeouts(first_byte_s=5, read_s=0.2))
        ) as orch:
            await slowed(sim)
            chunks: List[ChatChunk] = []
            silent = ""
            async for chunk in orch.chat_stream(TINY, MSGS, options=LONG):
                chunks.append(chunk)
                if len(chunks) == 2:
                    silent = chunk.server
                    sim[silent].pause()
                    await sim["h2" if silent == "h1" else "h1"].set_faults(Faults())
            sim[silent].resume()
        (record,) = chunks[-1].continuations
        assert record.broken == silent != record.server
        assert "read_s" in record.reason
        assert "".join(c.text for c in chunks if c.server == silent)


class TestGenerateContinues:
    async def test_generate_is_continued_raw_with_the_rendered_template(self) -> None:
        """Not raw: continued raw, the model's template (/api/show) rendered plus the partial."""
        async with pair() as sim, Orchestra(config_for(sim)) as orch:
            await slowed(sim)
            chunks: List[Any] = []
            async for chunk in orch.generate_stream(TINY, "why?", system="be brief", options=LONG):
                chunks.append(chunk)
                if len(chunks) == 3:
                    await kill(sim, chunk.server)
            broken = chunks[0].server
            other = "h2" if broken == "h1" else "h1"
            partial = "".join(c.response for c in chunks if c.server == broken)
            sent = [r for r in sim[other].requests if r.route == "/api/generate"][-1]
        assert sent.prompt == render_generate("why?", "be brief", raw=False) + partial
        assert chunks[-1].done and chunks[-1].continuations

    @pytest.mark.parametrize(
        ("template", "expected"),
        [
            ("{{ .Prompt }}", "P"),
            (
                "{{ if .System }}S:{{ .System }} {{ end }}{{ .Prompt }}=>{{ .Response }}END",
                "S:s P=>",
            ),
            ("{{ if .System }}S{{ else }}none{{ end }}", "S"),
            ("A  {{- .Prompt -}}  B", "APB"),
            ("{{ range .Messages }}{{ .Content }}{{ end }}", None),
            ("{{ if .Response }}{{ .Response }}{{ end }}", None),
            ("{{ if .System }}unclosed", None),
            ("{{ .Prompt | upper }}", None),
        ],
    )
    def test_render_simple(self, template: str, expected: Optional[str]) -> None:
        """Only simple templates render; up to {{ .Response }}."""
        assert render_simple(template, {"System": "s", "Prompt": "P"}) == expected


class TestSimulatorContinues:
    async def test_trailing_assistant_message_is_continued(self) -> None:
        """A chat ending with an assistant message: new text only, the prefill in the prompt."""
        async with fleet([tiny_profile("h1")]) as sim, Orchestra(config_for(sim)) as orch:
            plain = await orch.chat(TINY, MSGS, options={"num_predict": 4})
            prefill = "Once upon a time there was"
            cont = await orch.chat(
                TINY,
                [*MSGS, {"role": "assistant", "content": prefill}],
                options={"num_predict": 4},
            )
        assert not cont.message["content"].startswith(prefill)
        assert cont.eval_count == 4
        assert cont.prompt_eval_count is not None and plain.prompt_eval_count is not None
        # The prefill's tokens count as prompt (the open assistant header is in both).
        assert cont.prompt_eval_count - plain.prompt_eval_count == len(tokenize(prefill))

    async def test_raw_generate_counts_the_prompt_as_given(self) -> None:
        """Raw generate: the prompt as given is evaluated, the partial answer included."""
        async with fleet([tiny_profile("h1")]) as sim, Orchestra(config_for(sim)) as orch:
            a = await orch.generate(TINY, "abc", raw=True, options={"num_predict": 2})
            b = await orch.generate(TINY, "abc def ghi", raw=True, options={"num_predict": 2})
        assert (a.prompt_eval_count, b.prompt_eval_count) == (1, 3)


class TestNotContinued:
    async def test_no_other_host_raises(self) -> None:
        """With no other host serving the model, a break raises StreamInterrupted."""
        async with fleet([tiny_profile("h1")]) as sim, Orchestra(config_for(sim)) as orch:
            await slowed(sim)
            got: List[str] = []

            async def consume() -> None:
                async for chunk in orch.chat_stream(TINY, MSGS, options=LONG):
                    got.append(chunk.text)
                    if len(got) == 3:
                        await kill(sim, "h1")

            with pytest.raises(StreamInterrupted) as info:
                await consume()
            assert info.value.partial == "".join(got)

    async def test_other_build_of_the_model_raises(self) -> None:
        """A host serving another build of the model (another digest in /api/tags) does not
        continue the text: the break raises StreamInterrupted."""
        h2 = tiny_profile("h2")
        h2 = dataclasses.replace(
            h2, models=(dataclasses.replace(h2.models[0], revision="requantised"), *h2.models[1:])
        )
        async with fleet([tiny_profile("h1"), h2]) as sim, Orchestra(config_for(sim)) as orch:
            assert orch.state()["h1"].healthy and orch.state()["h2"].healthy
            await slowed(sim)
            got: List[ChatChunk] = []

            async def consume() -> None:
                async for chunk in orch.chat_stream(TINY, MSGS, options=LONG):
                    got.append(chunk)
                    if len(got) == 3:
                        await kill(sim, chunk.server)

            with pytest.raises(StreamInterrupted) as info:
                await consume()
            assert info.value.partial == "".join(c.text for c in got)
            # Not for want of a host: the other one is up and serves the model by name.
            other = {"h1", "h2"} - {got[0].server}
            assert all(orch.state()[name].healthy for name in other)

    @pytest.mark.parametrize(
        "retry", [RetryPolicy(mid_stream="raise"), False], ids=["raise", "no-retry"]
    )
    async def test_raise_policy_raises(self, retry: Any) -> None:
        """mid_stream="raise" or retry=False (per request) keeps today's StreamInterrupted."""
        async with pair() as sim, Orchestra(config_for(sim)) as orch:
            await slowed(sim)
            got: List[ChatChunk] = []

            async def consume() -> None:
                async for chunk in orch.chat_stream(TINY, MSGS, options=LONG, retry=retry):
                    got.append(chunk)
                    if len(got) == 3:
                        await kill(sim, chunk.server)

            with pytest.raises(StreamInterrupted):
                await consume()

    async def test_generate_with_a_template_not_simple_raises(self) -> None:
        """A generate stream whose template is not simple is not continued."""
        async with pair() as sim, Orchestra(config_for(sim)) as orch:
            await slowed(sim)
            got: List[str] = []

            async def consume() -> None:
                async for chunk in orch.generate_stream(
                    TINY, "x", template="{{ range .Messages }}{{ .Content }}{{ end }}", options=LONG
                ):
                    got.append(chunk.server)
                    if len(got) == 3:
                        await kill(sim, chunk.server)

            with pytest.raises(StreamInterrupted):
                await consume()

    async def test_raw_generate_is_continued(self) -> None:
        """A raw generate stream continues with prompt + partial, raw."""
        async with pair() as sim, Orchestra(config_for(sim)) as orch:
            await slowed(sim)
            chunks: List[Any] = []
            async for chunk in orch.generate_stream(TINY, "once upon", raw=True, options=LONG):
                chunks.append(chunk)
                if len(chunks) == 3:
                    await kill(sim, chunk.server)
            broken = chunks[0].server
            other = "h2" if broken == "h1" else "h1"
            partial = "".join(c.response for c in chunks if c.server == broken)
            sent = [r for r in sim[other].requests if r.route == "/api/generate"][-1]
            assert sent.prompt == "once upon" + partial
            assert chunks[-1].done and chunks[-1].continuations


class TestResume:
    def test_inside_thinking_is_not_continued(self) -> None:
        """Only thinking yielded so far: not continued."""
        r = Resume("/api/chat", {"messages": MSGS}, 2)
        r.seen({"message": {"role": "assistant", "content": "", "thinking": "hmm"}}, 0.0)
        assert r.why_not() == "broke inside thinking"

    def test_after_a_tool_call_is_not_continued(self) -> None:
        """A tool call yielded: not continued."""
        r = Resume("/api/chat", {"messages": MSGS}, 2)
        r.seen({"message": {"role": "assistant", "content": "a"}}, 0.0)
        r.seen({"message": {"role": "assistant", "content": "", "tool_calls": [{}]}}, 0.0)
        assert r.why_not() == "broke after a tool call"

    def test_format_is_not_continued(self) -> None:
        """Structured output: not continued (the grammar would restart)."""
        r = Resume("/api/chat", {"messages": MSGS, "format": "json"}, 2)
        r.seen({"message": {"role": "assistant", "content": "{"}}, 0.0)
        assert r.why_not() is not None

    def test_caller_prefill_is_extended(self) -> None:
        """A caller's own trailing assistant message is extended, not duplicated."""
        msgs: List[Dict[str, Any]] = [*MSGS, {"role": "assistant", "content": "Once"}]
        r = Resume("/api/chat", {"messages": msgs}, 2)
        r.seen({"message": {"role": "assistant", "content": " upon"}}, 0.0)
        assert r.request()["messages"][-1] == {"role": "assistant", "content": "Once upon"}

    def test_final_adds_both_parts(self) -> None:
        """The final chunk's eval_count adds the broken part's tokens."""
        from ollama_orchestra import Continuation

        r = Resume("/api/chat", {"messages": MSGS}, 2)
        for t in range(3):
            r.seen({"message": {"content": "x"}}, float(t))
        r.broke(0.0, 3.0)
        r.continued(Continuation("h1", "h2", 3, 3, 0.1, "reset"))
        out = r.final({"done": True, "eval_count": 5, "eval_duration": 10, "total_duration": 7})
        assert out["eval_count"] == 8 and out["total_duration"] == 7 + 3_000_000_000
        assert out["eval_duration"] == 10 + 2_000_000_000
        assert out["continuations"][0]["server"] == "h2"


class TestPolicyValidation:
    def test_config_file_policy(self, tmp_path: Any) -> None:
        """The config's [retry] table takes mid_stream and continuations."""
        path = tmp_path / "o.toml"
        path.write_text(
            '[[servers]]\nname = "a"\nurl = "http://127.0.0.1:1"\n'
            '[retry]\nmid_stream = "raise"\ncontinuations = 1\n'
        )
        orch = Orchestra.from_file(path)
        assert (orch.config.retry.mid_stream, orch.config.retry.continuations) == ("raise", 1)

    @pytest.mark.parametrize("bad", ["retry", "", None, 1])
    def test_bad_mid_stream(self, bad: Optional[object]) -> None:
        """mid_stream must be "continue" or "raise" (the field is named)."""
        with pytest.raises(ConfigError, match="mid_stream"):
            RetryPolicy(mid_stream=bad)  # type: ignore[arg-type]

    def test_bad_continuations(self) -> None:
        """continuations must be an integer >= 0."""
        with pytest.raises(ConfigError, match="continuations"):
            RetryPolicy(continuations=-1)
