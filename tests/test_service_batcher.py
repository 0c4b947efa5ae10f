"""The micro-batcher (service/batcher.py): sharing, bounds, per-caller results and errors."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, List, Sequence, Tuple

import pytest

from service.batcher import Batcher
from service.settings import Settings
from service.state import STATE
from tests.conftest import AiohttpClient

INLINE_MAX_CHARS = 1000


class FakeModel:
    """Upper-cases each title; fails on a title "boom"; records every call and its thread."""

    def __init__(self) -> None:
        self.calls: List[Tuple[List[str], str]] = []

    def predict(self, titles: Sequence[str], tags: Sequence[str]) -> List[str]:
        assert len(titles) == len(tags)
        self.calls.append((list(titles), threading.current_thread().name))
        if "boom" in titles:
            raise ValueError("boom in the batch")
        return [t.upper() + g for t, g in zip(titles, tags)]


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="model") as pool:
        yield pool


def submit(batcher: Batcher, *titles: str) -> asyncio.Future[List[str]]:
    items = list(titles)
    return asyncio.ensure_future(batcher.predict(items, [""] * len(items), sum(map(len, items))))


async def test_a_lone_request_runs_at_once_alone(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    batcher = Batcher(model, executor, max_rows=64, inline_max_chars=INLINE_MAX_CHARS)
    assert await batcher.predict(["a", "b"], ["x", ""], 3) == ["Ax", "B"]
    assert [titles for titles, _ in model.calls] == [["a", "b"]]


async def test_concurrent_requests_share_one_call_and_get_their_own_slice(
    executor: ThreadPoolExecutor,
) -> None:
    model = FakeModel()
    batcher = Batcher(model, executor, max_rows=64, inline_max_chars=INLINE_MAX_CHARS)
    results = await asyncio.gather(submit(batcher, "a"), submit(batcher, "b", "c"), submit(batcher, "d"))
    assert list(results) == [["A"], ["B", "C"], ["D"]]
    assert [titles for titles, _ in model.calls] == [["a", "b", "c", "d"]]
    assert (batcher.requests, batcher.batches) == (3, 1)


async def test_batches_are_bounded_and_keep_requests_whole(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    batcher = Batcher(model, executor, max_rows=3, inline_max_chars=INLINE_MAX_CHARS)
    results = await asyncio.gather(*(submit(batcher, f"t{i}", f"u{i}") for i in range(5)))
    assert results == [[f"T{i}", f"U{i}"] for i in range(5)]
    assert all(len(titles) <= 3 for titles, _ in model.calls)
    assert sum(len(titles) for titles, _ in model.calls) == 10


async def test_requests_arriving_while_a_batch_runs_form_the_next_batch(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    # inline_max_chars=0: every batch goes to the model thread, so the loop runs meanwhile.
    batcher = Batcher(model, executor, max_rows=64, inline_max_chars=0)
    first = submit(batcher, "first")
    await asyncio.sleep(0)  # the first batch starts with only "first" in it
    later = [submit(batcher, f"later{i}") for i in range(4)]
    assert await first == ["FIRST"]
    assert await asyncio.gather(*later) == [[f"LATER{i}"] for i in range(4)]
    assert [titles for titles, _ in model.calls] == [["first"], [f"later{i}" for i in range(4)]]


async def test_big_batches_run_on_the_model_thread_small_ones_inline(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    batcher = Batcher(model, executor, max_rows=64, inline_max_chars=10)
    await submit(batcher, "short")
    await submit(batcher, "a much longer title")
    threads = [thread for _, thread in model.calls]
    assert threads[0] == threading.current_thread().name
    assert threads[1].startswith("model")


async def test_a_failing_request_fails_alone(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    batcher = Batcher(model, executor, max_rows=64, inline_max_chars=INLINE_MAX_CHARS)
    ok, bad, other = submit(batcher, "a"), submit(batcher, "boom"), submit(batcher, "b", "c")
    results = await asyncio.gather(ok, bad, other, return_exceptions=True)
    assert results[0] == ["A"]
    assert isinstance(results[1], ValueError)
    assert results[2] == ["B", "C"]


async def test_a_cancelled_request_is_left_out(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    batcher = Batcher(model, executor, max_rows=64, inline_max_chars=INLINE_MAX_CHARS)
    gone, kept = submit(batcher, "gone"), submit(batcher, "kept")
    await asyncio.sleep(0)  # both queued
    gone.cancel()
    assert await kept == ["KEPT"]
    assert [titles for titles, _ in model.calls] == [["kept"]]
    # The batcher is idle again and serves the next request.
    assert await submit(batcher, "next") == ["NEXT"]


async def test_service_batches_concurrent_requests(aiohttp_client: AiohttpClient, settings: Settings) -> None:
    from service.app import create_app

    client = await aiohttp_client(create_app(settings))
    titles = [f"Caneca personalizada {i}" for i in range(20)]

    async def one(title: str) -> List[str]:
        response = await client.post("/v1/categorize", json={"products": [{"title": title}]})
        assert response.status == 200
        categories: List[str] = (await response.json())["categories"]
        return categories

    together = await asyncio.gather(*(one(t) for t in titles))
    state = client.app[STATE]
    assert state.batcher is not None
    alone = [state.model.predict([t], [""]) for t in titles]
    assert together == alone
    assert state.batcher.requests == len(titles)


async def test_batching_can_be_turned_off(aiohttp_client: AiohttpClient, settings: Settings) -> None:
    import dataclasses

    from service.app import create_app

    client = await aiohttp_client(create_app(dataclasses.replace(settings, batch_max_products=0)))
    response = await client.post("/v1/categorize", json={"products": [{"title": "Caneca"}]})
    assert response.status == 200
    assert client.app[STATE].batcher is None


def test_batch_setting_is_read_from_the_environment() -> None:
    assert Settings.from_env({"BATCH_MAX_PRODUCTS": "0"}).batch_max_products == 0
    assert Settings.from_env({}).batch_max_products == Settings.batch_max_products
