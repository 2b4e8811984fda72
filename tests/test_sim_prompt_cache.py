"""The simulator evaluates prompts as Ollama on llama-server does: per-slot prefix caching,
slot choice by similarity then LRU, the RAM prompt cache, and ``num_ctx`` per request."""

from __future__ import annotations

from typing import Any, AsyncIterator, Dict, List

import anyio
import httpx
import ollama
import pytest

from ollama_orchestra.sim import HostProfile, ModelSpec, SimServer
from ollama_orchestra.sim._kvcache import PromptCache
from ollama_orchestra.sim._prompt import render_chat, tokenize

M = "m:latest"
PROMPT_TPS = 1000.0
DECODE_TPS = 400.0


def profile(**kw: Any) -> HostProfile:
    spec = ModelSpec(
        M,
        size_gb=1,
        decode_tps=DECODE_TPS,
        prompt_tps=PROMPT_TPS,
        load_s=0.5,
        default_num_predict=8,
        context_length=32768,
        kv_bytes_per_token=kw.pop("kv_bytes_per_token", 100_000),
    )
    kw.setdefault("num_ctx", 16384)
    kw.setdefault("num_parallel", 2)
    return HostProfile("h", (spec,), **kw)


@pytest.fixture
async def server() -> AsyncIterator[SimServer]:
    async with SimServer(profile(), time_scale=0.001) as srv:
        yield srv


@pytest.fixture
async def http(server: SimServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


def context(tag: str, words: int = 600) -> str:
    """A long, distinct system prompt (about three tokens a word)."""
    return " ".join(f"{tag}{i} repo context" for i in range(words))


async def chat(
    http: httpx.AsyncClient, messages: List[Dict[str, Any]], **body: Any
) -> Dict[str, Any]:
    r = await http.post(
        "/api/chat",
        json={
            "model": M,
            "messages": messages,
            "stream": False,
            "options": {"num_predict": 8},
            **body,
        },
    )
    assert r.status_code == 200, r.text
    data: Dict[str, Any] = r.json()
    return data


def prefill_ns(tokens: int) -> int:
    return int(tokens / PROMPT_TPS * 1e9)


def assert_evaluated(resp: Dict[str, Any], tokens: int) -> None:
    # Reported in simulated ns from the model's rate: exact up to rounding.
    assert abs(resp["prompt_eval_duration"] - prefill_ns(tokens)) <= 1000, (resp, tokens)


def slots(server: SimServer) -> tuple:  # type: ignore[type-arg]
    return server.state().slot_cached_tokens.get(M, ())


class TestPrefixReuse:
    async def test_second_turn_evaluates_only_new_tokens(
        self, server: SimServer, http: httpx.AsyncClient
    ) -> None:
        """Turn 2 reuses turn 1's prompt and answer: count = all tokens, duration = new ones."""
        msgs = [{"role": "system", "content": context("a")}, {"role": "user", "content": "plan it"}]
        first = await chat(http, msgs)
        n1 = len(tokenize(render_chat(msgs, None)))
        assert first["prompt_eval_count"] == n1 > 1500
        assert_evaluated(first, n1)
        held = max(slots(server))  # the prompt plus the answer's tokens but its last
        assert n1 < held <= n1 + 8 * 2

        msgs += [first["message"], {"role": "user", "content": "now write the tests"}]
        second = await chat(http, msgs)
        n2 = len(tokenize(render_chat(msgs, None)))
        assert second["prompt_eval_count"] == n2  # Ollama counts cached tokens too
        assert 0 < n2 - held < 40
        assert_evaluated(second, n2 - held)

    async def test_official_client_sees_the_hit(self, server: SimServer) -> None:
        """Through the official client: the repeated prompt re-evaluates only its last token."""
        msgs = [{"role": "system", "content": context("b")}, {"role": "user", "content": "hi"}]
        async with ollama.AsyncClient(host=server.url) as client:
            cold = await client.chat(model=M, messages=msgs, options={"num_predict": 4})
            warm = await client.chat(model=M, messages=msgs, options={"num_predict": 4})
        assert cold.prompt_eval_count == warm.prompt_eval_count
        assert cold.prompt_eval_duration and warm.prompt_eval_duration
        assert warm.prompt_eval_duration == prefill_ns(1)
        assert cold.prompt_eval_duration > 1000 * warm.prompt_eval_duration

    async def test_changed_prefix_pays_from_the_change(self, http: httpx.AsyncClient) -> None:
        """The prefix must be exact: a change early in the prompt re-evaluates what follows."""
        base = context("c")
        await chat(http, [{"role": "system", "content": base}, {"role": "user", "content": "x"}])
        edited = "EDIT " + base
        msgs = [{"role": "system", "content": edited}, {"role": "user", "content": "x"}]
        again = await chat(http, msgs)
        assert again["prompt_eval_count"] == len(tokenize(render_chat(msgs, None)))
        assert again["prompt_eval_duration"] >= prefill_ns(again["prompt_eval_count"] - 10)


class TestSlotChoice:
    async def test_two_conversations_keep_their_slots(
        self, server: SimServer, http: httpx.AsyncClient
    ) -> None:
        """On a 2-slot host, two alternating conversations each find their prefix again."""
        convs = {
            tag: [{"role": "system", "content": context(tag)}, {"role": "user", "content": "go"}]
            for tag in ("a", "b")
        }
        for tag in ("a", "b"):
            convs[tag].append((await chat(http, convs[tag]))["message"])
        assert all(n > 1500 for n in slots(server))
        for tag in ("a", "b"):
            convs[tag].append({"role": "user", "content": "continue"})
            resp = await chat(http, convs[tag])
            assert resp["prompt_eval_count"] > 1500
            assert resp["prompt_eval_duration"] < prefill_ns(40)

    async def test_lost_slot_pays_again_without_ram_cache(self) -> None:
        """A third conversation takes the least recently used slot; its owner pays in full."""
        async with SimServer(profile(cache_ram_mib=0), time_scale=0.001) as srv, httpx.AsyncClient(
            base_url=srv.url, timeout=30
        ) as http:
            convs = {
                t: [
                    {"role": "system", "content": context(t)},
                    {"role": "user", "content": "go"},
                ]
                for t in ("a", "b", "c")
            }
            for t in ("a", "b", "c"):
                await chat(http, convs[t])
            back = await chat(http, convs["a"])  # a's slot went to c (LRU)
            # Only the template's opening is shared with c's prompt.
            assert back["prompt_eval_duration"] >= prefill_ns(back["prompt_eval_count"] - 10)
            assert srv.state().ram_cached_tokens[M] == ()

    async def test_lost_slot_is_restored_from_ram_cache(self) -> None:
        """With llama-server's RAM cache, the evicted prompt is restored: only a copy is paid."""
        async with SimServer(
            profile(kv_bytes_per_token=1_000_000, host_to_device_gbps=1.0), time_scale=0.001
        ) as srv, httpx.AsyncClient(base_url=srv.url, timeout=30) as http:
            convs = {
                t: [
                    {"role": "system", "content": context(t)},
                    {"role": "user", "content": "go"},
                ]
                for t in ("a", "b", "c")
            }
            for t in ("a", "b", "c"):
                await chat(http, convs[t])
            saved = srv.state().ram_cached_tokens[M]
            assert len(saved) == 1 and saved[0] > 1500  # a's tokens, saved on eviction
            back = await chat(http, convs["a"])
            assert_evaluated(back, 1)  # identical prompt: the last token only
            # Copying KV state (1 MB/token at 1 GB/s: 1 ms/token, saved + restored) is
            # paid before the prompt timer, so it shows in total_duration only.
            copy_s = 2 * saved[0] * 1e-3
            assert back["total_duration"] >= copy_s * 1e9
            assert back["prompt_eval_duration"] < 0.01 * copy_s * 1e9


class TestNumCtx:
    async def test_chat_drops_oldest_messages_keeping_system_and_last(
        self, server: SimServer, http: httpx.AsyncClient
    ) -> None:
        """Over num_ctx, the oldest messages go; the system prompt and the last message stay."""
        system = {"role": "system", "content": "be brief"}
        old = [{"role": "user", "content": context(f"h{i}", 100)} for i in range(5)]
        last = {"role": "user", "content": "the question"}
        resp = await chat(http, [system, *old, last], options={"num_ctx": 1000, "num_predict": 2})
        kept = [system, *old[-2:], last]
        assert resp["prompt_eval_count"] == len(tokenize(render_chat(kept, None)))
        assert resp["prompt_eval_count"] <= 1000
        assert server.state().num_ctx == {M: 1000}

    async def test_long_prompt_keeps_num_keep_and_the_end(self, http: httpx.AsyncClient) -> None:
        """A single prompt over num_ctx keeps its first num_keep tokens and its end."""
        r = await http.post(
            "/api/generate",
            json={
                "model": M,
                "prompt": context("g"),
                "raw": True,
                "stream": False,
                "options": {"num_ctx": 1000, "num_predict": 1},
            },
        )
        assert r.status_code == 200
        assert r.json()["prompt_eval_count"] == 1000 - (1000 - 4) // 2

    async def test_truncate_false_is_refused(self, http: httpx.AsyncClient) -> None:
        """With truncate false, a prompt over num_ctx fails as llama-server fails it."""
        r = await http.post(
            "/api/generate",
            json={
                "model": M,
                "prompt": context("t"),
                "truncate": False,
                "options": {"num_ctx": 1000},
            },
        )
        assert r.status_code == 400
        assert "exceeds the available context size" in r.json()["error"]

    async def test_other_num_ctx_reloads_and_clears_the_cache(
        self, server: SimServer, http: httpx.AsyncClient
    ) -> None:
        """A request with another num_ctx reloads the model (as Ollama's needsReload)."""
        msgs = [{"role": "system", "content": context("r")}, {"role": "user", "content": "go"}]
        await chat(http, msgs)
        again = await chat(http, msgs, options={"num_ctx": 8192, "num_predict": 8})
        st = server.state()
        assert st.loads == 2 and st.num_ctx == {M: 8192}
        assert again["load_duration"] >= 0.5e9
        assert_evaluated(again, again["prompt_eval_count"])
        ps = (await http.get("/api/ps")).json()["models"]
        assert ps[0]["context_length"] == 8192

    async def test_default_context_follows_vram(self) -> None:
        """Without num_ctx, the context is Ollama's VRAM tier, capped at the model's."""
        spec = ModelSpec(M, context_length=131072)
        assert HostProfile("h", (spec,)).default_num_ctx(spec) == 4096
        assert HostProfile("h", (spec,), vram_gb=24).default_num_ctx(spec) == 32768
        assert HostProfile("h", (spec,), vram_gb=80).default_num_ctx(spec) == 131072
        assert HostProfile("h", (spec,), vram_gb=80, num_ctx=2048).default_num_ctx(spec) == 2048


class TestUnload:
    async def test_unload_clears_the_caches(
        self, server: SimServer, http: httpx.AsyncClient
    ) -> None:
        """keep_alive 0 ends the runner: the same prompt is evaluated in full afterwards."""
        msgs = [{"role": "system", "content": context("u")}, {"role": "user", "content": "go"}]
        await chat(http, msgs)
        r = await http.post("/api/generate", json={"model": M, "keep_alive": 0})
        assert r.json()["done_reason"] == "unload"
        assert server.state().slot_cached_tokens == {}
        again = await chat(http, msgs)
        assert_evaluated(again, again["prompt_eval_count"])


class TestPrefillAndDecode:
    async def test_prefill_stalls_the_other_slots_decode(self) -> None:
        """As in llama-server's batches, a long prompt slows the decoding slot beside it."""
        async with SimServer(profile(), time_scale=0.002) as srv, httpx.AsyncClient(
            base_url=srv.url, timeout=30
        ) as http:
            await http.post("/api/generate", json={"model": M})  # load
            results: Dict[str, Dict[str, Any]] = {}

            async def run(name: str, prompt: str, n: int) -> None:
                r = await http.post(
                    "/api/generate",
                    json={
                        "model": M,
                        "prompt": prompt,
                        "raw": True,
                        "stream": False,
                        "options": {"num_predict": n},
                    },
                )
                results[name] = r.json()

            srv.pause()
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, "decoder", "hi", 400)
                tg.start_soon(run, "prefill", context("p", 700), 1)
                await srv.wait_until(lambda st: st.in_flight == 2)
                srv.resume()
        dec, pre = results["decoder"], results["prefill"]
        alone = 400 / DECODE_TPS
        assert dec["eval_duration"] > 1.5 * alone * 1e9
        assert pre["prompt_eval_duration"] >= prefill_ns(pre["prompt_eval_count"])


def toks(tag: str, n: int) -> List[str]:
    return [f"{tag}{i}" for i in range(n)]


def cache(slots: int = 2, ram: int = 10**9) -> PromptCache:
    return PromptCache(slots, kv_bytes_per_token=1000, ram_bytes=ram, limit_tokens=100)


class TestSlotRule:
    def test_empty_slots_go_in_lru_order_last_first(self) -> None:
        """llama-server's LRU pick keeps the last of equally old slots: slot n-1 first."""
        c = cache(3)
        assert c.admit(toks("a", 10)).slot == 2
        assert c.admit(toks("b", 10)).slot == 1

    def test_most_similar_idle_slot_wins(self) -> None:
        """The idle slot sharing the longest prefix (> 10% of the prompt) is taken."""
        c = cache()
        a, b = c.admit(toks("a", 100)), c.admit(toks("b", 100))
        c.release(a.slot, toks("a", 100))
        c.release(b.slot, toks("b", 100))
        again = c.admit(toks("a", 100) + toks("x", 5))
        assert (again.slot, again.cached, again.evaluate) == (a.slot, 100, 5)

    def test_below_threshold_falls_back_to_lru(self) -> None:
        """A prefix of at most 10% of the prompt does not count: the oldest slot is used."""
        c = cache()
        a = c.admit(toks("a", 100))
        c.release(a.slot, toks("a", 100))
        b = c.admit(toks("b", 100))
        c.release(b.slot, toks("b", 100))
        other = c.admit(toks("a", 10) + toks("z", 90))
        assert other.slot == a.slot  # least recently used, and it holds the 10-token prefix
        assert other.cached == 10

    def test_low_keep_saves_to_ram_and_restores_later(self) -> None:
        """Taking a slot that keeps under half its tokens saves them; a later prompt restores them."""
        c = cache(1)
        a = c.admit(toks("a", 100))
        c.release(a.slot, toks("a", 100))
        b = c.admit(toks("a", 20) + toks("b", 80))  # keeps 20% of a: a goes to RAM
        assert b.cached == 20 and c.ram_entries() == (100,)
        c.release(b.slot, toks("a", 20) + toks("b", 80))
        back = c.admit(toks("a", 100) + toks("q", 3))
        assert (back.cached, back.restored_tokens) == (100, 100)
        assert back.copied_bytes == (100 + 100) * 1000  # b saved, a restored
        assert c.ram_entries() == (100,)  # b's tokens now

    def test_identical_prompt_evaluates_one_token(self) -> None:
        """A fully cached prompt still evaluates its last token (for the logits)."""
        c = cache(1)
        a = c.admit(toks("a", 50))
        c.release(a.slot, toks("a", 50))
        assert (c.admit(toks("a", 50)).cached, c.slots()[0].busy) == (49, True)

    def test_ram_cache_drops_oldest_over_its_size(self) -> None:
        """Over --cache-ram, the oldest entries go (at least one stays)."""
        c = cache(1, ram=250_000)  # 250 tokens
        for tag in "abcd":
            s = c.admit(toks(tag, 100))
            c.release(s.slot, toks(tag, 100))
        assert c.ram_entries() == (100, 100)
        assert c.ram_bytes() == 200_000


class TestPromptsInSlotOrder:
    async def test_prompts_waiting_together_are_evaluated_one_at_a_time(self) -> None:
        """As llama-server fills each batch from the first slot's prompt on, two prompts
        that arrive together are evaluated one after the other, not side by side: one
        answer starts after its own prompt's time, the other after both, and each reports
        only its own evaluation time."""
        async with SimServer(profile(), time_scale=0.02) as srv, httpx.AsyncClient(
            base_url=srv.url, timeout=30
        ) as http:
            await http.post("/api/generate", json={"model": M})  # load
            results: Dict[str, Dict[str, Any]] = {}

            async def run(tag: str) -> None:
                r = await http.post(
                    "/api/generate",
                    json={
                        "model": M,
                        "prompt": context(tag, 700),
                        "raw": True,
                        "stream": False,
                        "options": {"num_predict": 1},
                    },
                )
                results[tag] = r.json()

            srv.pause()
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, "a")
                tg.start_soon(run, "b")
                await srv.wait_until(lambda st: st.in_flight == 2)
                srv.resume()
        for r in results.values():
            # Its own prompt's time (a decode step of the other beside it costs a little).
            own = prefill_ns(r["prompt_eval_count"])
            assert own <= r["prompt_eval_duration"] < 1.01 * own
        first, second = sorted(results.values(), key=lambda r: r["total_duration"])
        # Shared side by side, both would end after both prompts' time.
        both = first["prompt_eval_duration"] + second["prompt_eval_duration"]
        assert first["total_duration"] < 0.75 * both
        assert second["total_duration"] >= both
