"""Tests of ``llamatelemetry.decorators``: spans around sync, async, generator and async-generator code."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

import llamatelemetry
from llamatelemetry.decorators import error_type, span, trace, workflow
from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv import llamatelemetry as names
from llamatelemetry.testing import InMemoryTelemetry, fresh_plugin_manager

CHUNKS = names.STREAM_CHUNKS
CLOSED_EARLY = names.STREAM_CLOSED_EARLY


class BoomError(Exception):
    """A non-builtin exception: its ``error.type`` is fully qualified."""


class Outer:
    class NestedError(Exception):
        """A nested exception class: ``error.type`` uses the qualified name."""


@pytest.fixture
def telemetry() -> Iterator[InMemoryTelemetry]:
    # An isolated plugin manager keeps installed plugins out of the core tests.
    with fresh_plugin_manager(), InMemoryTelemetry() as t:
        yield t


def tracer() -> trace_api.Tracer:
    return llamatelemetry.get_tracer()


def only(t: InMemoryTelemetry, name: str) -> ReadableSpan:
    return t.span(name)


def assert_error(span_: ReadableSpan, expected_type: str) -> None:
    assert span_.status.status_code is StatusCode.ERROR
    assert span_.attributes is not None
    assert span_.attributes[gen_ai.ERROR_TYPE] == expected_type
    exception_events = [e for e in span_.events if e.name == "exception"]
    assert len(exception_events) == 1, [e.name for e in span_.events]


def assert_not_error(span_: ReadableSpan) -> None:
    assert span_.status.status_code is not StatusCode.ERROR
    assert span_.attributes is not None
    assert gen_ai.ERROR_TYPE not in span_.attributes
    assert not [e for e in span_.events if e.name == "exception"]


# ----------------------------------------------------------------------------- error_type


def test_error_type_of_builtin_is_bare_class_name() -> None:
    assert error_type(ValueError("x")) == "ValueError"
    assert error_type(KeyError("x")) == "KeyError"


def test_error_type_of_non_builtin_is_fully_qualified() -> None:
    assert error_type(json.JSONDecodeError("bad", "doc", 0)) == "json.decoder.JSONDecodeError"
    assert error_type(BoomError()) == f"{__name__}.BoomError"
    assert error_type(Outer.NestedError()) == f"{__name__}.Outer.NestedError"


# ----------------------------------------------------------------------------- sync functions


def test_trace_without_parens_names_span_after_function(telemetry: InMemoryTelemetry) -> None:
    @trace
    def add(a: int, b: int) -> int:
        return a + b

    assert add(2, 3) == 5
    spans = telemetry.spans()
    assert [s.name for s in spans] == [add.__qualname__]
    attributes = spans[0].attributes
    assert attributes is not None
    assert attributes[names.SPAN_KIND] == "function"
    assert attributes[names.CODE_FUNCTION_NAME] == f"{__name__}.{add.__qualname__}"
    assert_not_error(spans[0])


def test_trace_with_empty_parens(telemetry: InMemoryTelemetry) -> None:
    @trace()
    def hello() -> str:
        return "hi"

    assert hello() == "hi"
    assert [s.name for s in telemetry.spans()] == [hello.__qualname__]


def test_trace_with_name_and_attributes(telemetry: InMemoryTelemetry) -> None:
    @trace(name="custom op", attributes={"app.tenant": "acme", "app.retries": 3})
    def work() -> int:
        return 7

    assert work() == 7
    s = only(telemetry, "custom op")
    assert s.attributes is not None
    assert s.attributes["app.tenant"] == "acme"
    assert s.attributes["app.retries"] == 3
    assert s.attributes[names.SPAN_KIND] == "function"


def test_trace_with_positional_name(telemetry: InMemoryTelemetry) -> None:
    @trace("positional name")
    def work() -> None:
        return None

    work()
    only(telemetry, "positional name")


def test_span_decorator_marks_task(telemetry: InMemoryTelemetry) -> None:
    @span("load model", attributes={"app.model": "tiny"})
    def load() -> str:
        return "loaded"

    assert load() == "loaded"
    s = only(telemetry, "load model")
    assert s.attributes is not None
    assert s.attributes[names.SPAN_KIND] == "task"
    assert s.attributes["app.model"] == "tiny"
    assert names.WORKFLOW_NAME not in s.attributes


def test_workflow_decorator_marks_workflow(telemetry: InMemoryTelemetry) -> None:
    @workflow("nightly-eval")
    def run() -> int:
        return 1

    assert run() == 1
    s = only(telemetry, "nightly-eval")
    assert s.attributes is not None
    assert s.attributes[names.SPAN_KIND] == "workflow"
    assert s.attributes[names.WORKFLOW_NAME] == "nightly-eval"


@pytest.mark.parametrize("factory", [span, workflow])
@pytest.mark.parametrize("bad", ["", None, 3])
def test_span_and_workflow_need_a_name(factory: object, bad: object) -> None:
    with pytest.raises(TypeError, match="name"):
        factory(bad)  # type: ignore[operator]


def test_decorating_a_non_callable_raises() -> None:
    with pytest.raises(TypeError, match="wrap functions"):
        trace(name="x")(42)  # type: ignore[type-var]


def test_nested_decorated_calls_are_parented(telemetry: InMemoryTelemetry) -> None:
    @span("inner")
    def inner() -> int:
        return 1

    @workflow("outer")
    def outer() -> int:
        return inner() + 1

    assert outer() == 2
    parent, child = only(telemetry, "outer"), only(telemetry, "inner")
    assert child.parent is not None
    assert child.parent.span_id == parent.context.span_id
    assert child.context.trace_id == parent.context.trace_id


def test_method_is_traced_with_self(telemetry: InMemoryTelemetry) -> None:
    class Model:
        def __init__(self) -> None:
            self.calls = 0

        @trace
        def generate(self, prompt: str) -> str:
            self.calls += 1
            return prompt.upper()

    model = Model()
    assert model.generate("hi") == "HI"
    assert model.calls == 1
    s = only(telemetry, Model.generate.__qualname__)
    assert s.attributes is not None
    assert s.attributes[names.CODE_FUNCTION_NAME].endswith("Model.generate")


def test_sync_exception_sets_error_and_propagates(telemetry: InMemoryTelemetry) -> None:
    @trace(name="fails")
    def fails() -> None:
        raise BoomError("kaput")

    with pytest.raises(BoomError, match="kaput"):
        fails()
    s = only(telemetry, "fails")
    assert_error(s, f"{__name__}.BoomError")
    event = next(e for e in s.events if e.name == "exception")
    assert event.attributes is not None
    assert event.attributes["exception.message"] == "kaput"


def test_builtin_exception_error_type_is_bare(telemetry: InMemoryTelemetry) -> None:
    @trace(name="fails")
    def fails() -> None:
        raise ValueError("bad value")

    with pytest.raises(ValueError, match="bad value"):
        fails()
    assert_error(only(telemetry, "fails"), "ValueError")


def test_exception_in_child_marks_both_spans(telemetry: InMemoryTelemetry) -> None:
    @span("child")
    def child() -> None:
        raise KeyError("k")

    @workflow("parent")
    def parent() -> None:
        child()

    with pytest.raises(KeyError):
        parent()
    assert_error(only(telemetry, "child"), "KeyError")
    assert_error(only(telemetry, "parent"), "KeyError")


def test_functools_wraps_metadata_preserved() -> None:
    def original(x: int, *, y: str = "a") -> str:
        """Original docstring."""
        return f"{x}{y}"

    for decorated in (trace(original), trace(name="n")(original), span("s")(original), workflow("w")(original)):
        assert decorated.__name__ == "original"
        assert decorated.__qualname__ == original.__qualname__
        assert decorated.__doc__ == "Original docstring."
        assert decorated.__module__ == original.__module__
        assert decorated.__wrapped__ is original  # type: ignore[attr-defined]
        assert inspect.signature(decorated) == inspect.signature(original)


def test_decorated_function_works_without_init() -> None:
    # No init(): the global (no-op by default) provider is used and the function still runs.
    llamatelemetry.shutdown()

    @trace
    def value() -> int:
        return 41

    assert value() == 41


# ----------------------------------------------------------------------------- async functions


def test_async_function_span_and_return_value(telemetry: InMemoryTelemetry) -> None:
    @trace(name="async op", attributes={"app.k": "v"})
    async def op(x: int) -> int:
        await asyncio.sleep(0)
        with tracer().start_as_current_span("inside"):
            pass
        return x * 2

    assert inspect.iscoroutinefunction(op)
    assert asyncio.run(op(21)) == 42
    outer, inner = only(telemetry, "async op"), only(telemetry, "inside")
    assert outer.attributes is not None
    assert outer.attributes["app.k"] == "v"
    assert inner.parent is not None
    assert inner.parent.span_id == outer.context.span_id
    assert_not_error(outer)


def test_async_exception_sets_error_and_propagates(telemetry: InMemoryTelemetry) -> None:
    @workflow("async fails")
    async def fails() -> None:
        await asyncio.sleep(0)
        raise BoomError("async kaput")

    with pytest.raises(BoomError, match="async kaput"):
        asyncio.run(fails())
    assert_error(only(telemetry, "async fails"), f"{__name__}.BoomError")


def test_async_wraps_metadata_preserved() -> None:
    async def coro(a: int) -> int:
        """Coroutine doc."""
        return a

    decorated = trace(coro)
    assert decorated.__name__ == "coro"
    assert decorated.__doc__ == "Coroutine doc."
    assert decorated.__wrapped__ is coro  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- context managers


def test_span_as_context_manager(telemetry: InMemoryTelemetry) -> None:
    with span("block", attributes={"app.x": 1}) as s:
        assert s.is_recording()
        assert trace_api.get_current_span() is s
        s.set_attribute("app.inside", True)
        with tracer().start_as_current_span("child"):
            pass
    assert trace_api.get_current_span() is not s
    block, child = only(telemetry, "block"), only(telemetry, "child")
    assert block.attributes is not None
    assert block.attributes["app.x"] == 1
    assert block.attributes["app.inside"] is True
    assert block.attributes[names.SPAN_KIND] == "task"
    assert child.parent is not None and child.parent.span_id == block.context.span_id
    assert_not_error(block)


def test_workflow_and_trace_as_context_managers(telemetry: InMemoryTelemetry) -> None:
    with workflow("pipeline"), trace(name="step"):
        pass
    pipeline, step = only(telemetry, "pipeline"), only(telemetry, "step")
    assert pipeline.attributes is not None and step.attributes is not None
    assert pipeline.attributes[names.WORKFLOW_NAME] == "pipeline"
    assert step.attributes[names.SPAN_KIND] == "function"
    assert step.parent is not None and step.parent.span_id == pipeline.context.span_id


def test_trace_context_manager_needs_a_name() -> None:
    with pytest.raises(TypeError, match="needs a name"), trace():
        pass


def test_context_manager_exception_sets_error_and_propagates(telemetry: InMemoryTelemetry) -> None:
    with pytest.raises(BoomError), span("failing block"):
        raise BoomError("in block")
    assert_error(only(telemetry, "failing block"), f"{__name__}.BoomError")
    assert trace_api.get_current_span() is trace_api.INVALID_SPAN


def test_context_manager_instance_is_reusable_sequentially(telemetry: InMemoryTelemetry) -> None:
    step = span("step")
    with step:
        pass
    with step:
        pass
    spans = telemetry.spans()
    assert [s.name for s in spans] == ["step", "step"]
    assert spans[0].context.span_id != spans[1].context.span_id


def test_async_context_manager(telemetry: InMemoryTelemetry) -> None:
    async def main() -> None:
        async with span("async block") as s:
            assert s.is_recording()
            await asyncio.sleep(0)
            with tracer().start_as_current_span("child"):
                pass
        with pytest.raises(BoomError):
            async with workflow("async failing"):
                await asyncio.sleep(0)
                raise BoomError("boom")

    asyncio.run(main())
    block, child = only(telemetry, "async block"), only(telemetry, "child")
    assert child.parent is not None and child.parent.span_id == block.context.span_id
    assert_not_error(block)
    assert_error(only(telemetry, "async failing"), f"{__name__}.BoomError")


def test_shared_context_manager_across_concurrent_tasks(telemetry: InMemoryTelemetry,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    step = span("shared step")
    between: list[int] = []

    async def main() -> None:
        a_entered, b_entered, a_exited = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def task_a() -> None:
            async with step as s:
                s.set_attribute("app.task", "a")
                a_entered.set()
                await b_entered.wait()
            between.append(time.time_ns())
            a_exited.set()

        async def task_b() -> None:
            await a_entered.wait()
            async with step as s:
                s.set_attribute("app.task", "b")
                b_entered.set()
                await a_exited.wait()

        await asyncio.gather(task_a(), task_b())

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    spans = {s.attributes["app.task"]: s for s in telemetry.spans() if s.attributes}
    assert set(spans) == {"a", "b"}
    # Each task's span ends when that task leaves the block.
    assert spans["a"].end_time is not None and spans["b"].end_time is not None
    assert spans["a"].end_time <= between[0] < spans["b"].end_time
    assert "Failed to detach context" not in caplog.text


# ----------------------------------------------------------------------------- generators


def test_generator_span_covers_whole_iteration(telemetry: InMemoryTelemetry) -> None:
    @trace(name="stream")
    def stream(n: int) -> Iterator[int]:
        yield from range(n)

    gen = stream(3)
    assert inspect.isgenerator(gen)
    assert telemetry.spans() == []  # nothing starts before the first next()
    before_first = time.time_ns()
    received: list[int] = []
    last_item_at = 0
    for _ in range(3):
        received.append(next(gen))
        last_item_at = time.time_ns()
        assert telemetry.spans() == [], "the span ended before the stream was exhausted"
    assert received == [0, 1, 2]
    with pytest.raises(StopIteration):
        next(gen)
    s = only(telemetry, "stream")
    assert s.start_time is not None and s.end_time is not None
    assert before_first <= s.start_time
    assert s.end_time >= last_item_at
    assert s.attributes is not None
    assert s.attributes[CHUNKS] == 3
    assert s.attributes.get(CLOSED_EARLY, False) is False
    assert s.attributes[names.SPAN_KIND] == "function"
    assert_not_error(s)


def test_generator_return_value_preserved(telemetry: InMemoryTelemetry) -> None:
    @span("with return")
    def gen() -> Iterator[int]:
        yield 1
        return "done"  # type: ignore[misc]

    def delegate() -> Iterator[int]:
        result = yield from gen()
        assert result == "done"
        yield 99

    assert list(delegate()) == [1, 99]
    assert only(telemetry, "with return").attributes[CHUNKS] == 1  # type: ignore[index]


def test_empty_generator_records_zero_chunks(telemetry: InMemoryTelemetry) -> None:
    @trace(name="empty")
    def empty() -> Iterator[int]:
        return
        yield  # pragma: no cover

    assert list(empty()) == []
    s = only(telemetry, "empty")
    assert s.attributes is not None
    assert s.attributes[CHUNKS] == 0
    assert s.attributes.get(CLOSED_EARLY, False) is False


def test_generator_close_early_ends_span(telemetry: InMemoryTelemetry) -> None:
    inner_closed: list[bool] = []

    @trace(name="stream")
    def stream() -> Iterator[int]:
        try:
            yield from range(10)
        finally:
            inner_closed.append(True)

    gen = stream()
    assert [next(gen), next(gen)] == [0, 1]
    assert telemetry.spans() == []
    gen.close()
    assert inner_closed == [True]
    s = only(telemetry, "stream")
    assert s.attributes is not None
    assert s.attributes[CLOSED_EARLY] is True
    assert s.attributes[CHUNKS] == 2
    assert_not_error(s)


def test_generator_break_then_close(telemetry: InMemoryTelemetry) -> None:
    @trace(name="stream")
    def stream() -> Iterator[int]:
        yield from range(10)

    gen = stream()
    for item in gen:
        if item == 3:
            break
    gen.close()
    s = only(telemetry, "stream")
    assert s.attributes is not None
    assert s.attributes[CLOSED_EARLY] is True
    assert s.attributes[CHUNKS] == 4


def test_abandoned_generator_ends_span_on_gc(telemetry: InMemoryTelemetry) -> None:
    @trace(name="abandoned")
    def stream() -> Iterator[int]:
        yield from range(10)

    gen = stream()
    assert next(gen) == 0
    assert next(gen) == 1
    assert next(gen) == 2
    del gen
    gc.collect()
    s = only(telemetry, "abandoned")
    assert s.attributes is not None
    assert s.attributes[CLOSED_EARLY] is True
    assert s.attributes[CHUNKS] == 3
    assert trace_api.get_current_span() is trace_api.INVALID_SPAN


def test_generator_send_passes_through(telemetry: InMemoryTelemetry) -> None:
    received: list[object] = []

    @trace(name="echo")
    def echo() -> Iterator[object]:
        value = yield "ready"
        while value is not None:
            received.append(value)
            value = yield f"got {value}"

    gen = echo()
    assert next(gen) == "ready"
    assert gen.send("a") == "got a"
    assert gen.send("b") == "got b"
    with pytest.raises(StopIteration):
        gen.send(None)
    assert received == ["a", "b"]
    assert only(telemetry, "echo").attributes[CHUNKS] == 3  # type: ignore[index]


def test_generator_throw_handled_by_inner(telemetry: InMemoryTelemetry) -> None:
    @trace(name="resilient")
    def resilient() -> Iterator[str]:
        for i in range(3):
            try:
                yield f"item {i}"
            except BoomError as exc:
                yield f"recovered from {exc}"

    gen = resilient()
    assert next(gen) == "item 0"
    assert gen.throw(BoomError("x")) == "recovered from x"
    assert next(gen) == "item 1"
    assert list(gen) == ["item 2"]
    s = only(telemetry, "resilient")
    assert s.attributes is not None
    assert s.attributes[CHUNKS] == 4
    assert_not_error(s)


def test_generator_throw_unhandled_propagates_and_errors(telemetry: InMemoryTelemetry) -> None:
    seen: list[str] = []

    @trace(name="fragile")
    def fragile() -> Iterator[int]:
        try:
            yield 1
            yield 2
        except BoomError:
            seen.append("inner saw it")
            raise

    gen = fragile()
    assert next(gen) == 1
    with pytest.raises(BoomError, match="thrown"):
        gen.throw(BoomError("thrown"))
    assert seen == ["inner saw it"]
    s = only(telemetry, "fragile")
    assert_error(s, f"{__name__}.BoomError")
    assert s.attributes is not None
    assert s.attributes[CHUNKS] == 1


def test_generator_exception_in_body_sets_error(telemetry: InMemoryTelemetry) -> None:
    @workflow("broken stream")
    def broken() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("mid-stream")

    gen = broken()
    assert [next(gen), next(gen)] == [1, 2]
    with pytest.raises(ValueError, match="mid-stream"):
        next(gen)
    s = only(telemetry, "broken stream")
    assert_error(s, "ValueError")
    assert s.attributes is not None
    assert s.attributes[CHUNKS] == 2
    assert s.attributes.get(CLOSED_EARLY, False) is False


def test_generator_parenting_body_vs_consumer(telemetry: InMemoryTelemetry) -> None:
    @trace(name="stream")
    def stream() -> Iterator[int]:
        for i in range(3):
            with tracer().start_as_current_span(f"produce {i}"):
                pass
            yield i

    with tracer().start_as_current_span("consumer") as consumer:
        for item in stream():
            assert trace_api.get_current_span() is consumer
            with tracer().start_as_current_span(f"consume {item}"):
                pass

    consumer_span, stream_span = only(telemetry, "consumer"), only(telemetry, "stream")
    assert stream_span.parent is not None
    assert stream_span.parent.span_id == consumer_span.context.span_id
    for i in range(3):
        produced, consumed = only(telemetry, f"produce {i}"), only(telemetry, f"consume {i}")
        assert produced.parent is not None and produced.parent.span_id == stream_span.context.span_id
        assert consumed.parent is not None and consumed.parent.span_id == consumer_span.context.span_id
        assert produced.context.trace_id == consumed.context.trace_id == consumer_span.context.trace_id


def test_generator_cleanup_code_runs_inside_span(telemetry: InMemoryTelemetry) -> None:
    @trace(name="stream")
    def stream() -> Iterator[int]:
        try:
            yield from range(5)
        finally:
            with tracer().start_as_current_span("cleanup"):
                pass

    gen = stream()
    next(gen)
    gen.close()
    cleanup, stream_span = only(telemetry, "cleanup"), only(telemetry, "stream")
    assert cleanup.parent is not None and cleanup.parent.span_id == stream_span.context.span_id


def test_generator_wraps_metadata_preserved() -> None:
    def produce(n: int) -> Iterator[int]:
        """Produce doc."""
        yield n

    decorated = trace(produce)
    assert decorated.__name__ == "produce"
    assert decorated.__doc__ == "Produce doc."
    assert decorated.__wrapped__ is produce  # type: ignore[attr-defined]
    assert list(decorated(5)) == [5]


# ----------------------------------------------------------------------------- async generators


def test_async_generator_span_covers_iteration(telemetry: InMemoryTelemetry) -> None:
    last_item_at: list[int] = []

    @trace(name="astream")
    async def astream(n: int) -> AsyncIterator[int]:
        for i in range(n):
            await asyncio.sleep(0)
            with tracer().start_as_current_span(f"produce {i}"):
                pass
            yield i

    async def main() -> list[int]:
        agen = astream(3)
        assert inspect.isasyncgen(agen)
        items: list[int] = []
        with tracer().start_as_current_span("consumer") as consumer:
            async for item in agen:
                items.append(item)
                last_item_at.append(time.time_ns())
                assert trace_api.get_current_span() is consumer
                assert not [s for s in telemetry.spans() if s.name == "astream"]
                with tracer().start_as_current_span(f"consume {item}"):
                    pass
        return items

    assert asyncio.run(main()) == [0, 1, 2]
    s = only(telemetry, "astream")
    consumer = only(telemetry, "consumer")
    assert s.end_time is not None and s.end_time >= last_item_at[-1]
    assert s.attributes is not None
    assert s.attributes[CHUNKS] == 3
    assert s.attributes.get(CLOSED_EARLY, False) is False
    assert s.parent is not None and s.parent.span_id == consumer.context.span_id
    for i in range(3):
        produced, consumed = only(telemetry, f"produce {i}"), only(telemetry, f"consume {i}")
        assert produced.parent is not None and produced.parent.span_id == s.context.span_id
        assert consumed.parent is not None and consumed.parent.span_id == consumer.context.span_id
    assert_not_error(s)


def test_async_generator_aclose_early(telemetry: InMemoryTelemetry) -> None:
    inner_closed: list[bool] = []

    @span("astream")
    async def astream() -> AsyncIterator[int]:
        try:
            for i in range(10):
                yield i
        finally:
            inner_closed.append(True)

    async def main() -> None:
        agen = astream()
        assert await agen.__anext__() == 0
        assert await agen.__anext__() == 1
        assert not telemetry.spans()
        await agen.aclose()

    asyncio.run(main())
    assert inner_closed == [True]
    s = only(telemetry, "astream")
    assert s.attributes is not None
    assert s.attributes[CLOSED_EARLY] is True
    assert s.attributes[CHUNKS] == 2
    assert_not_error(s)


def test_async_generator_left_open_is_closed_at_loop_shutdown(telemetry: InMemoryTelemetry) -> None:
    kept: list[AsyncIterator[int]] = []

    @trace(name="astream")
    async def astream() -> AsyncIterator[int]:
        for i in range(10):
            yield i

    async def main() -> None:
        agen = astream()
        kept.append(agen)  # still referenced: asyncio.run() closes it in shutdown_asyncgens()
        async for item in agen:
            if item == 2:
                break

    asyncio.run(main())
    s = only(telemetry, "astream")
    assert s.attributes is not None
    assert s.attributes[CLOSED_EARLY] is True
    assert s.attributes[CHUNKS] == 3
    assert_not_error(s)


def test_async_generator_abandoned_is_closed_when_collected(telemetry: InMemoryTelemetry) -> None:
    @trace(name="astream")
    async def astream() -> AsyncIterator[int]:
        for i in range(10):
            yield i

    async def main() -> None:
        agen = astream()
        assert await agen.__anext__() == 0
        assert await agen.__anext__() == 1
        del agen
        gc.collect()
        for _ in range(5):  # the loop's finalizer hook schedules aclose() as a task
            await asyncio.sleep(0)
        assert [s.name for s in telemetry.spans()] == ["astream"]

    asyncio.run(main())
    s = only(telemetry, "astream")
    assert s.attributes is not None
    assert s.attributes[CLOSED_EARLY] is True
    assert s.attributes[CHUNKS] == 2
    assert_not_error(s)


def test_async_generator_asend_and_athrow(telemetry: InMemoryTelemetry) -> None:
    @trace(name="aecho")
    async def aecho() -> AsyncIterator[str]:
        value = yield "ready"
        while True:
            try:
                value = yield f"got {value}"
            except BoomError:
                value = yield "recovered"

    async def main() -> None:
        agen = aecho()
        assert await agen.asend(None) == "ready"
        assert await agen.asend("a") == "got a"
        assert await agen.athrow(BoomError("x")) == "recovered"
        assert await agen.asend("b") == "got b"
        await agen.aclose()

    asyncio.run(main())
    s = only(telemetry, "aecho")
    assert s.attributes is not None
    assert s.attributes[CHUNKS] == 4
    assert s.attributes[CLOSED_EARLY] is True
    assert_not_error(s)


def test_async_generator_exception_sets_error(telemetry: InMemoryTelemetry) -> None:
    @workflow("abroken")
    async def abroken() -> AsyncIterator[int]:
        yield 1
        raise BoomError("async stream failed")

    async def main() -> list[int]:
        return [i async for i in abroken()]

    with pytest.raises(BoomError, match="async stream failed"):
        asyncio.run(main())
    s = only(telemetry, "abroken")
    assert_error(s, f"{__name__}.BoomError")
    assert s.attributes is not None
    assert s.attributes[CHUNKS] == 1


def test_async_generator_wraps_metadata_preserved() -> None:
    async def aproduce() -> AsyncIterator[int]:
        """Async produce doc."""
        yield 1

    decorated = trace(aproduce)
    assert decorated.__name__ == "aproduce"
    assert decorated.__doc__ == "Async produce doc."
    assert decorated.__wrapped__ is aproduce  # type: ignore[attr-defined]


def test_decorated_generator_functions_stay_generator_functions() -> None:
    @llamatelemetry.trace
    def numbers() -> Iterator[int]:
        yield 1

    assert inspect.isgeneratorfunction(numbers)
    assert list(numbers()) == [1]
