"""The scheduler (service/scheduler.py): admission, batching, inline or thread, dropped
and refused work. Unit tests use a fake model; the last ones go through the real app."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from runtime.categorizer import INPUT_SELLER, LISTING_FIELDS, Column
from service import scheduler as scheduling
from service.app import create_app
from service.errors import ApiError
from service.metrics import Metrics
from service.scheduler import ROW_CHARS, CostModel, Prediction, Scheduler
from service.settings import Settings
from service.state import STATE, State
from tests.conftest import AiohttpClient

INLINE_MAX_CHARS = 1000
MAX_ROWS = 64


class FakeModel:
    """Upper-cases each title, followed by its tags and its known listing fields
    (fake_category), and gives it a row of "probabilities" of its own (fake_row); fails
    on a title "boom"; records every call's titles and thread, and its columns. With
    `gate` set, each call waits for it (so a test can hold the model busy)."""

    def __init__(self, gate: Optional[threading.Event] = None) -> None:
        self.calls: List[Tuple[List[str], str]] = []
        self.columns: List[Dict[str, List[Any]]] = []
        self.gate = gate
        self.running = 0
        self.most_running = 0

    def predict_with_probabilities(self, columns: Mapping[str, Column]) -> Tuple[List[str], np.ndarray]:
        titles, tags = list(columns["title"]), list(columns["concatenated_tags"])
        fields = {name: list(columns[name]) for name in LISTING_FIELDS if name in columns}
        assert all(len(column) == len(titles) for column in [tags, *fields.values()])
        # The runtime's types: the seller a string ("" unknown), the numbers numbers or None.
        assert all(isinstance(seller, str) for seller in fields.get(INPUT_SELLER, []))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            self.calls.append((titles, threading.current_thread().name))
            self.columns.append({"title": titles, **fields})
            if self.gate is not None:
                assert self.gate.wait(10), "test gate never opened"
            if "boom" in titles:
                raise ValueError("boom in the batch")
            rows = np.array([fake_row(t) for t in titles], dtype=np.float32).reshape(len(titles), 2)
            known = [{name: column[i] for name, column in fields.items()} for i in range(len(titles))]
            return [fake_category(t, g, f) for t, g, f in zip(titles, tags, known)], rows
        finally:
            self.running -= 1


def fake_category(title: str, tags: str, fields: Mapping[str, Any]) -> str:
    """The title upper-cased, its tags, and each listing field it has a value for (unknown
    ones, "" or None, left out: what a product gets depends on its own fields alone)."""
    values = [(name, fields[name]) for name in LISTING_FIELDS if name in fields]
    known = "".join(f"|{name}={value}" for name, value in values if value not in ("", None))
    return title.upper() + tags + known


def fake_row(title: str) -> List[float]:
    return [float(len(title)), float(sum(map(ord, title)) % 1000)]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="model") as pool:
        yield pool


def make(
    model: FakeModel,
    executor: ThreadPoolExecutor,
    *,
    max_rows: int = MAX_ROWS,
    inline_max_chars: int = INLINE_MAX_CHARS,
    max_pending_bytes: int = 1 << 30,
    max_queue_seconds: float = 60.0,
    clock: Callable[[], float] = Clock(),
    trim: Callable[[], None] = lambda: None,
) -> Tuple[Scheduler, Metrics]:
    metrics = Metrics(["A"])
    scheduler = Scheduler(
        model,
        executor,
        metrics,
        max_pending_bytes=max_pending_bytes,
        max_queue_seconds=max_queue_seconds,
        batch_max_products=max_rows,
        inline_max_chars=inline_max_chars,
        clock=clock,
        trim=trim,
    )
    return scheduler, metrics


def submit(
    scheduler: Scheduler,
    *titles: str,
    nbytes: int = 100,
    gone: Callable[[], bool] = lambda: False,
    fields: Optional[Dict[str, List[Any]]] = None,
) -> asyncio.Future[List[str]]:
    """Admits and runs one request, releasing its ticket when done, as the handler does;
    its categories."""
    return asyncio.ensure_future(
        _categories(predict(scheduler, *titles, nbytes=nbytes, gone=gone, fields=fields))
    )


async def _categories(prediction: Awaitable[Prediction]) -> List[str]:
    return (await prediction).categories


def predict(
    scheduler: Scheduler,
    *titles: str,
    nbytes: int = 100,
    gone: Callable[[], bool] = lambda: False,
    fields: Optional[Dict[str, List[Any]]] = None,
) -> asyncio.Future[Prediction]:
    """As submit, but the whole prediction."""
    items = list(titles)
    ticket = scheduler.admit(nbytes)
    scheduler.grow(ticket, nbytes)  # the whole body arrived
    tags = [""] * len(items)

    async def run() -> Prediction:
        try:
            return await scheduler.categorize(ticket, items, tags, fields or {}, sum(map(len, items)), gone)
        finally:
            scheduler.release(ticket)

    return asyncio.ensure_future(run())


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Polls the server's state (a test cannot await it) until `condition` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.005)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# -- batching, inline or thread ------------------------------------------------


async def test_a_lone_request_runs_at_once_alone(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    scheduler, _ = make(model, executor)
    assert await submit(scheduler, "a", "b") == ["A", "B"]
    assert [titles for titles, _ in model.calls] == [["a", "b"]]


async def test_a_big_request_on_an_idle_worker_runs_in_the_handler(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    scheduler, _ = make(model, executor, max_rows=2)
    ticket = scheduler.admit(10)
    # Not awaited through the queue: the call happens before categorize first yields.
    coroutine = scheduler.categorize(ticket, ["a", "b", "c"], ["", "", ""], {}, 3, lambda: False)
    with pytest.raises(StopIteration) as done:
        coroutine.send(None)
    assert done.value.value.categories == ["A", "B", "C"]
    assert model.calls[0][1] == threading.current_thread().name


async def test_concurrent_requests_share_one_call_and_get_their_own_slice(
    executor: ThreadPoolExecutor,
) -> None:
    model = FakeModel()
    scheduler, _ = make(model, executor)
    requests = [submit(scheduler, "a"), submit(scheduler, "b", "c"), submit(scheduler, "d")]
    results = await asyncio.gather(*requests)
    assert list(results) == [["A"], ["B", "C"], ["D"]]
    assert [titles for titles, _ in model.calls] == [["a", "b", "c", "d"]]
    assert (scheduler.requests, scheduler.calls) == (3, 1)


async def test_calls_are_bounded_and_keep_requests_whole(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    scheduler, _ = make(model, executor, max_rows=3)
    results = await asyncio.gather(*(submit(scheduler, f"t{i}", f"u{i}") for i in range(5)))
    assert results == [[f"T{i}", f"U{i}"] for i in range(5)]
    assert all(len(titles) <= 3 for titles, _ in model.calls)
    assert sum(len(titles) for titles, _ in model.calls) == 10


async def test_a_big_request_in_the_queue_runs_alone(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    scheduler, _ = make(model, executor, max_rows=3)
    results = await asyncio.gather(
        submit(scheduler, "a"), submit(scheduler, "b", "c", "d"), submit(scheduler, "e")
    )
    assert list(results) == [["A"], ["B", "C", "D"], ["E"]]
    assert [titles for titles, _ in model.calls] == [["a"], ["b", "c", "d"], ["e"]]


async def test_requests_arriving_while_a_call_runs_form_the_next_call(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    # inline_max_chars=0: every call goes to the model thread, so the loop runs meanwhile.
    scheduler, _ = make(model, executor, inline_max_chars=0)
    first = submit(scheduler, "first")
    await asyncio.sleep(0)  # the first call starts with only "first" in it
    later = [submit(scheduler, f"later{i}") for i in range(4)]
    assert await first == ["FIRST"]
    assert await asyncio.gather(*later) == [[f"LATER{i}"] for i in range(4)]
    assert [titles for titles, _ in model.calls] == [["first"], [f"later{i}" for i in range(4)]]


async def test_big_calls_run_on_the_model_thread_small_ones_inline(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    scheduler, _ = make(model, executor, inline_max_chars=ROW_CHARS + 10)
    await submit(scheduler, "short")
    await submit(scheduler, "a much longer title")
    threads = [thread for _, thread in model.calls]
    assert threads[0] == threading.current_thread().name
    assert threads[1].startswith("model")


async def test_each_product_is_charged_for_its_row_not_only_its_characters(
    executor: ThreadPoolExecutor,
) -> None:
    # Many one-letter titles are few characters but much model work: they go to the thread.
    model = FakeModel()
    scheduler, _ = make(model, executor, inline_max_chars=ROW_CHARS + 10)
    await submit(scheduler, "ten letter")
    await submit(scheduler, "a", "b")
    threads = [thread for _, thread in model.calls]
    assert threads[0] == threading.current_thread().name
    assert threads[1].startswith("model")


async def test_the_thread_runs_one_call_and_holds_only_the_next(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    model = FakeModel(gate)
    scheduler, _ = make(model, executor, max_rows=1, inline_max_chars=0)
    pending = [submit(scheduler, f"big{i}") for i in range(4)]
    await until(lambda: len(model.calls) == 1)
    await asyncio.sleep(0.05)
    assert len(model.calls) == 1, "a second call started while the first ran"
    # big1 waits ready on the thread; the rest stays in the queue, where it can be dropped.
    assert scheduler.queued_requests == 2
    gate.set()
    assert await asyncio.gather(*pending) == [["BIG0"], ["BIG1"], ["BIG2"], ["BIG3"]]
    assert model.most_running == 1


async def test_a_failing_request_fails_alone(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    scheduler, _ = make(model, executor)
    ok, bad, other = submit(scheduler, "a"), submit(scheduler, "boom"), submit(scheduler, "b", "c")
    results = await asyncio.gather(ok, bad, other, return_exceptions=True)
    assert results[0] == ["A"]
    assert isinstance(results[1], ValueError)
    assert results[2] == ["B", "C"]


async def test_probabilities_follow_their_products(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    scheduler, _ = make(model, executor, max_rows=8, inline_max_chars=0)
    # Two small requests share one call; a big one runs in sub-batches sorted by length.
    small = [predict(scheduler, "a", "bb"), predict(scheduler, "ccc")]
    rows = [f"{i}" + "x" * (i % 13) for i in range(2 * scheduling.SUB_BATCH_ROWS + 5)]
    big = predict(scheduler, *rows)
    for titles, prediction in zip([["a", "bb"], ["ccc"], rows], await asyncio.gather(*small, big)):
        assert prediction.categories == [t.upper() for t in titles]
        assert prediction.probabilities.tolist() == [fake_row(t) for t in titles]
    assert len(model.calls) == 1 + 3  # the shared call, then the big one's three sub-batches


def listing(i: int) -> Dict[str, Any]:
    """Product i's listing fields, each known for some products only, so that requests mix
    known and unknown values."""
    return {
        "seller_id": "" if i % 3 == 0 else f"s{i}",
        "price": None if i % 4 == 0 else float(i),
        "weight": float(i * 10) if i % 2 else None,
        "minimum_quantity": None,
        "express_delivery": [None, True, 0.0][i % 3],
    }


def columns_of(rows: List[Dict[str, Any]], names: List[str]) -> Dict[str, List[Any]]:
    return {name: [row[name] for row in rows] for name in names}


async def test_listing_fields_follow_their_products(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    scheduler, _ = make(model, executor, max_rows=8, inline_max_chars=0)
    # Small requests share one call: with every field, with some, with none; a big one
    # runs in sub-batches sorted by length (the titles' lengths are shuffled against i).
    firsts = [listing(i) for i in range(1, 4)]
    requests = [
        (["a", "bb", "ccc"], columns_of(firsts, list(LISTING_FIELDS))),
        (["dddd"], {}),
        (["e", "ff"], columns_of([listing(5), listing(6)], ["price", "seller_id"])),
    ]
    count = 2 * scheduling.SUB_BATCH_ROWS + 5
    big_titles = [f"{i}" + "x" * ((i * 7) % 13) for i in range(count)]
    big_rows = [listing(i) for i in range(count)]
    requests.append((big_titles, columns_of(big_rows, list(LISTING_FIELDS))))
    results = await asyncio.gather(
        *(predict(scheduler, *titles, fields=fields) for titles, fields in requests)
    )
    for (titles, fields), prediction in zip(requests, results):
        rows = [{name: column[i] for name, column in fields.items()} for i in range(len(titles))]
        assert prediction.categories == [fake_category(t, "", row) for t, row in zip(titles, rows)]
        assert prediction.probabilities.tolist() == [fake_row(t) for t in titles]
    assert len(model.calls) == 1 + 3, "the small requests did not share one call"
    shared = model.columns[0]
    # Rows of a request that lacks a field carry the runtime's unknown: "" or None.
    assert shared["seller_id"] == ["s1", "s2", "", "", "s5", ""]
    assert shared["weight"] == [10.0, None, 30.0, None, None, None]
    sub_batch = model.columns[1]["title"]
    assert sub_batch != sorted(sub_batch, key=big_titles.index), "the sort reordered nothing"


async def test_a_prediction_carries_the_time_of_its_model_call(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    scheduler, _ = make(FakeModel(gate), executor, inline_max_chars=0)
    shared = [predict(scheduler, "a"), predict(scheduler, "b")]
    await asyncio.sleep(0.05)  # the call waits on the gate meanwhile
    gate.set()
    first, second = await asyncio.gather(*shared)
    assert first.seconds >= 0.04
    assert second.seconds == first.seconds  # one call, shared
    alone = await predict(make(FakeModel(), executor)[0], "c")
    assert 0 < alone.seconds < first.seconds


async def test_a_cancelled_request_is_left_out(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    scheduler, _ = make(model, executor)
    gone, kept = submit(scheduler, "gone"), submit(scheduler, "kept")
    await asyncio.sleep(0)  # both queued
    gone.cancel()
    assert await kept == ["KEPT"]
    assert [titles for titles, _ in model.calls] == [["kept"]]
    assert await submit(scheduler, "next") == ["NEXT"]  # idle again, serves the next one


# -- work nobody will read -------------------------------------------------------


async def test_a_request_whose_client_left_is_dropped_before_its_call(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    model = FakeModel(gate)
    scheduler, metrics = make(model, executor, max_rows=1, inline_max_chars=0)
    left = False
    running = submit(scheduler, "running")
    on_thread = submit(scheduler, "on_thread", gone=lambda: left)  # handed, waiting on the thread
    in_queue = submit(scheduler, "in_queue", gone=lambda: left)  # still in the scheduler's queue
    kept = submit(scheduler, "kept")
    await asyncio.sleep(0.05)
    assert scheduler.queued_requests == 2
    left = True  # both clients disconnect while their requests wait
    gate.set()
    assert await running == ["RUNNING"]
    for departed in (on_thread, in_queue):
        with pytest.raises(ApiError) as error:
            await departed
        assert error.value.status == 499
    assert await kept == ["KEPT"]
    assert [titles for titles, _ in model.calls] == [["running"], ["kept"]]
    assert sample(metrics, "categorizer_abandoned_requests_total") == 2


async def test_a_request_that_waited_too_long_is_refused_not_run(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    model = FakeModel(gate)
    clock = Clock()
    scheduler, metrics = make(
        model, executor, max_rows=1, inline_max_chars=0, max_queue_seconds=5, clock=clock
    )
    running = [submit(scheduler, "running"), submit(scheduler, "next")]  # the next waits on the thread
    late = submit(scheduler, "late")
    await asyncio.sleep(0.05)
    clock.now += 6  # "late" has now waited longer than MAX_QUEUE_SECONDS
    gate.set()
    assert await asyncio.gather(*running) == [["RUNNING"], ["NEXT"]]
    with pytest.raises(ApiError) as error:
        await late
    assert error.value.status == 503
    assert int(error.value.headers["Retry-After"]) >= 1
    assert [titles for titles, _ in model.calls] == [["running"], ["next"]]
    assert sample(metrics, "categorizer_refused_requests_total", reason="queue_expired") == 1


async def test_shutdown_refuses_the_queue_at_once_and_finishes_the_running_call(
    executor: ThreadPoolExecutor,
) -> None:
    gate = threading.Event()
    model = FakeModel(gate)
    scheduler, metrics = make(model, executor, max_rows=1, inline_max_chars=0)
    running = [submit(scheduler, "running"), submit(scheduler, "next")]  # the next waits on the thread
    queued = [submit(scheduler, f"queued{i}") for i in range(3)]
    await asyncio.sleep(0.05)
    assert scheduler.refuse_queued() == 3
    for future in queued:
        with pytest.raises(ApiError, match="shutting down") as error:
            await future
        assert error.value.status == 503
    assert not any(future.done() for future in running)
    gate.set()
    assert await asyncio.gather(*running) == [["RUNNING"], ["NEXT"]]
    assert sample(metrics, "categorizer_refused_requests_total", reason="shutting_down") == 3
    scheduler.close(keep_seconds=10.0)
    with pytest.raises(ApiError, match="shutting down"):
        scheduler.admit(10)


# -- admission -----------------------------------------------------------------


def test_the_bytes_budget_refuses_with_retry_after_from_the_queue(executor: ThreadPoolExecutor) -> None:
    scheduler, metrics = make(FakeModel(), executor, max_pending_bytes=1000)
    scheduler.cost.seconds_per_char = 1e-3  # slow: 5,000 bytes arriving are ~5 s of work
    first = scheduler.admit(5000)  # an idle worker takes any request, even one over the budget
    with pytest.raises(ApiError) as error:
        scheduler.admit(10)
    assert error.value.status == 503
    assert error.value.headers["Retry-After"] == "6"  # ~5.0 s of work pending, rounded up
    assert sample(metrics, "categorizer_refused_requests_total", reason="pending_bytes") == 1
    scheduler.release(first)
    assert (scheduler.pending_requests, scheduler.pending_bytes, scheduler.pending_seconds) == (0, 0, 0.0)
    scheduler.release(scheduler.admit(900))  # fits again


async def test_the_time_budget_refuses_work_that_would_wait_too_long(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    scheduler, metrics = make(
        FakeModel(gate), executor, max_rows=1, inline_max_chars=0, max_queue_seconds=1.0
    )
    scheduler.cost.seconds_per_char = 1e-3
    queued = [submit(scheduler, "x" * 600) for _ in range(2)]  # ~0.6 s of work each
    await asyncio.sleep(0.05)
    with pytest.raises(ApiError) as error:
        scheduler.admit(10)  # would wait ~1.2 s
    assert error.value.status == 503
    assert error.value.headers["Retry-After"] == "2"  # the ~1.2 s of work ahead, rounded up
    assert sample(metrics, "categorizer_refused_requests_total", reason="queue_time") == 1
    gate.set()
    await asyncio.gather(*queued)


def test_a_chunked_body_is_counted_as_it_arrives(executor: ThreadPoolExecutor) -> None:
    scheduler, _ = make(FakeModel(), executor, max_pending_bytes=1000)
    other = scheduler.admit(400)
    chunked = scheduler.admit(None)
    scheduler.grow(chunked, 500)
    assert scheduler.pending_bytes == 900
    with pytest.raises(ApiError) as error:
        scheduler.grow(chunked, 700)
    assert error.value.status == 503
    scheduler.release(chunked)
    scheduler.release(other)
    assert (scheduler.pending_requests, scheduler.pending_bytes) == (0, 0)


def test_the_cost_model_learns_the_machine_speed() -> None:
    cost = CostModel()
    for _ in range(50):
        cost.observe(1_000_000, 2.0)  # 2 us a character: a slow machine
    assert cost.estimate(1_000_000) == pytest.approx(2.0, rel=0.01)
    cost.observe(100, 5.0)  # a tiny call measures its fixed cost, not characters: ignored
    assert cost.estimate(1_000_000) == pytest.approx(2.0, rel=0.01)


async def test_memory_is_given_back_once_quiet_after_a_burst(
    executor: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduling, "TRIM_DELAY_SECONDS", 0.1)
    clock = Clock()
    trims: List[float] = []
    scheduler, _ = make(FakeModel(), executor, clock=clock, trim=lambda: trims.append(clock.now))
    await submit(scheduler, "small")
    clock.now += 1
    await asyncio.sleep(0.2)
    assert trims == [], "trimmed after a small request"
    await asyncio.gather(*(submit(scheduler, "big", nbytes=scheduling.TRIM_AFTER_BYTES) for _ in range(2)))
    # Requests keep coming within the delay: the worker is idle between them only for
    # instants, and no trim may interrupt that load.
    for _ in range(3):
        await asyncio.sleep(0.05)
        clock.now += 0.05
        await submit(scheduler, "steady")
    await asyncio.sleep(0.15)
    assert trims == [], "trimmed between the requests of a steady load"
    clock.now += 0.2  # now quiet for longer than the delay
    await asyncio.sleep(0.15)
    assert len(trims) == 1


# -- through the app -----------------------------------------------------------


async def test_service_batches_concurrent_requests(aiohttp_client: AiohttpClient, settings: Settings) -> None:
    client = await aiohttp_client(create_app(settings))
    titles = [f"Caneca personalizada {i}" for i in range(20)]

    async def one(title: str) -> List[str]:
        response = await client.post("/v1/categorize", json={"products": [{"title": title}]})
        assert response.status == 200
        categories: List[str] = (await response.json())["categories"]
        return categories

    together = await asyncio.gather(*(one(t) for t in titles))
    state = client.app[STATE]
    alone = [state.model.predict([t], [""]) for t in titles]
    assert together == alone
    assert state.scheduler.requests == len(titles)
    assert state.scheduler.calls < len(titles)


async def test_batching_can_be_turned_off(aiohttp_client: AiohttpClient, settings: Settings) -> None:
    client = await aiohttp_client(create_app(dataclasses.replace(settings, batch_max_products=0)))
    titles = [f"Caneca personalizada {i}" for i in range(5)]
    responses = await asyncio.gather(
        *(client.post("/v1/categorize", json={"products": [{"title": t}]}) for t in titles)
    )
    assert [r.status for r in responses] == [200] * 5
    assert client.app[STATE].scheduler.calls == 5


async def test_an_overloaded_worker_answers_503_problem_with_retry_after(
    aiohttp_client: AiohttpClient, settings: Settings
) -> None:
    client = await aiohttp_client(create_app(dataclasses.replace(settings, max_pending_bytes=2048)))
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"products": [{"title": "Caneca personalizada"'
        await release.wait()
        yield b"}]}"

    # A chunked upload that has started holds its place; a 4 KB request does not fit beside it.
    holding = asyncio.ensure_future(client.post("/v1/categorize", data=slow_body()))
    state = client.app[STATE]
    await until(lambda: state.scheduler.pending_requests > 0)
    products = [{"title": f"Caneca {i}"} for i in range(200)]
    refused = await client.post("/v1/categorize", json={"products": products})
    assert refused.status == 503
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert int(refused.headers["Retry-After"]) >= 1
    problem = await refused.json()
    assert problem["status"] == 503
    assert "busy" in problem["detail"]
    release.set()
    held = await holding
    assert held.status == 200
    assert (await held.json())["categories"]
    accepted = await client.post("/v1/categorize", json={"products": products})
    assert accepted.status == 200, "the budget was not given back"
    metrics = (await (await client.get("/metrics")).read()).decode()
    assert 'categorizer_refused_requests_total{reason="pending_bytes"} 1.0' in metrics
    assert "categorizer_pending_requests 0.0" in metrics


def test_admission_settings_are_read_from_the_environment() -> None:
    env = {"MAX_PENDING_BYTES": "1048576", "MAX_QUEUE_SECONDS": "2.5", "BATCH_MAX_PRODUCTS": "0"}
    settings = Settings.from_env(env)
    assert (settings.max_pending_bytes, settings.max_queue_seconds, settings.batch_max_products) == (
        1048576,
        2.5,
        0,
    )
    assert Settings.from_env({}).max_pending_bytes == Settings.max_pending_bytes


async def test_a_client_that_leaves_while_queued_costs_no_model_call(
    settings: Settings, free_port: int
) -> None:
    # A runner of our own, as service/server.py makes it: aiohttp's test server cancels
    # a handler whose client leaves (handler_cancellation), the real one does not.
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", free_port).start()
        await _leave_while_queued(app[STATE], f"http://127.0.0.1:{free_port}")
    finally:
        await runner.cleanup()


async def _leave_while_queued(state: State, base: str) -> None:
    calls: List[int] = []
    real_predict = state.model.predict_with_probabilities

    def counting_predict(columns: Mapping[str, Column]) -> Tuple[List[str], np.ndarray]:
        calls.append(len(columns["title"]))
        return real_predict(columns)

    state.model.predict_with_probabilities = counting_predict  # type: ignore[method-assign]
    async with aiohttp.ClientSession() as session:
        # Two big requests occupy the model thread: one runs, the next waits ready ...
        big = {"products": [{"title": f"Caneca personalizada {i} " * 16} for i in range(2000)]}
        running = [asyncio.ensure_future(session.post(f"{base}/v1/categorize", json=big)) for _ in range(2)]
        await until(lambda: bool(calls))
        # ... while a third (thread-sized too) queues behind them, and its client hangs up.
        _, writer = await asyncio.open_connection("127.0.0.1", int(base.rsplit(":", 1)[1]))
        body = json.dumps({"products": [{"title": "Caneca azul " * 50}] * 20}).encode()
        head = f"POST /v1/categorize HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        await until(lambda: state.scheduler.queued_requests > 0)
        writer.close()
        await writer.wait_closed()
        for response in await asyncio.gather(*running):
            assert response.status == 200
            response.release()
        await until(lambda: state.scheduler.pending_requests == 0)  # the dropped one's answer
        assert sum(calls) == 2 * len(big["products"]), f"the departed request ran: {calls}"
        async with session.get(f"{base}/metrics") as metrics:
            text = await metrics.text()
    assert "categorizer_abandoned_requests_total 1.0" in text
    assert 'categorizer_http_requests_total{route="/v1/categorize",status="499"} 1.0' in text


async def test_at_shutdown_work_that_would_start_within_the_drain_still_runs(
    executor: ThreadPoolExecutor,
) -> None:
    gate = threading.Event()
    scheduler, _ = make(FakeModel(gate), executor, max_rows=1, inline_max_chars=0)
    scheduler.cost.seconds_per_char = 1e-3  # each 600-character request: ~0.6 s of work
    running = [submit(scheduler, "x" * 600) for _ in range(2)]  # on the thread
    queued = [submit(scheduler, f"{i}" * 600) for i in range(4)]
    await until(lambda: scheduler.queued_requests == 4)
    # A one-second drain: the first two queued would start within it (0 and ~0.6 s of
    # queued work ahead of them), the other two would not.
    assert scheduler.refuse_queued(keep_seconds=1.0) == 2
    gate.set()
    results = await asyncio.gather(*running, *queued, return_exceptions=True)
    assert [isinstance(r, ApiError) for r in results] == [False, False, False, False, True, True]


async def test_a_big_request_stops_between_sub_batches_once_its_client_left(
    executor: ThreadPoolExecutor,
) -> None:
    model = FakeModel()
    scheduler, metrics = make(model, executor, inline_max_chars=0)
    rows = [f"t{i}" for i in range(3 * scheduling.SUB_BATCH_ROWS)]
    # The client leaves while the first of three sub-batches runs.
    running = submit(scheduler, *rows, gone=lambda: len(model.calls) >= 1)
    with pytest.raises(ApiError) as error:
        await running
    assert error.value.status == 499
    assert len(model.calls) == 1
    assert sample(metrics, "categorizer_abandoned_requests_total") == 1
