"""``trace``, ``span`` and ``workflow``: spans around user functions of every kind.

Sync and async functions get a span for the call. Generator and async-generator functions get
one span covering the whole iteration: it starts at the first ``next()``, stays open until the
generator is exhausted, closed or garbage-collected (then ``llamatelemetry.stream.closed_early``
is true), and counts the items yielded. The span is current only while the generator's own code
runs, so the consumer's code between items is not parented to it. Exceptions end the span with
status ERROR and ``error.type``.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from llamatelemetry.semconv import gen_ai
from llamatelemetry.semconv import llamatelemetry as names

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["trace", "span", "workflow", "record_error", "error_type"]

F = TypeVar("F", bound=Callable[..., Any])

AttributeMap = Mapping[str, Any]


def error_type(exc: BaseException) -> str:
    """The ``error.type`` value for an exception: its fully qualified class name."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"


def _is_cancellation(exc: BaseException) -> bool:
    import asyncio

    return isinstance(exc, asyncio.CancelledError)


def record_error(span: Span, exc: BaseException) -> None:
    """Mark ``span`` as failed by ``exc``: status ERROR, ``error.type`` and an exception event."""
    from opentelemetry.trace import Status, StatusCode

    if not span.is_recording():
        return
    span.set_attribute(gen_ai.ERROR_TYPE, error_type(exc))
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


class _Instrumented:
    """Decorator and context manager: makes a span named ``name`` with ``attributes``."""

    def __init__(self, name: str | None, attributes: AttributeMap | None, kind: str,
                 workflow_name: str | None = None) -> None:
        self._name = name
        self._attributes: dict[str, Any] = {names.SPAN_KIND: kind}
        if workflow_name is not None:
            self._attributes[names.WORKFLOW_NAME] = workflow_name
        if attributes:
            self._attributes.update(attributes)
        # Per context (thread or asyncio task), so one instance can be entered concurrently.
        self._active: contextvars.ContextVar[tuple[tuple[Any, Any], ...]] = contextvars.ContextVar(
            f"llamatelemetry_active_{id(self)}", default=())

    # ------------------------------------------------------------ as a decorator

    def __call__(self, fn: F) -> F:
        if not callable(fn):
            raise TypeError(f"llamatelemetry decorators wrap functions; got {type(fn).__name__}.")
        span_name = self._name or fn.__qualname__
        attributes = {**self._attributes, names.CODE_FUNCTION_NAME: f"{fn.__module__}.{fn.__qualname__}"}
        if inspect.isasyncgenfunction(fn):
            return self._wrap_async_generator(fn, span_name, attributes)  # type: ignore[return-value]
        if inspect.isgeneratorfunction(fn):
            return self._wrap_generator(fn, span_name, attributes)  # type: ignore[return-value]
        if inspect.iscoroutinefunction(fn):
            return self._wrap_coroutine(fn, span_name, attributes)  # type: ignore[return-value]
        return self._wrap_function(fn, span_name, attributes)  # type: ignore[return-value]

    @staticmethod
    def _wrap_function(fn: Callable[..., Any], span_name: str, attributes: dict[str, Any]) -> Callable[..., Any]:
        from llamatelemetry._runtime import get_tracer

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with get_tracer().start_as_current_span(
                span_name, attributes=attributes, record_exception=False, set_status_on_exception=False
            ) as span:
                try:
                    return fn(*args, **kwargs)
                except BaseException as exc:
                    record_error(span, exc)
                    raise

        return wrapper

    @staticmethod
    def _wrap_coroutine(fn: Callable[..., Any], span_name: str, attributes: dict[str, Any]) -> Callable[..., Any]:
        from llamatelemetry._runtime import get_tracer

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            with get_tracer().start_as_current_span(
                span_name, attributes=attributes, record_exception=False, set_status_on_exception=False
            ) as span:
                try:
                    return await fn(*args, **kwargs)
                except BaseException as exc:
                    record_error(span, exc)
                    raise

        return wrapper

    @staticmethod
    def _wrap_generator(fn: Callable[..., Generator[Any, Any, Any]], span_name: str,
                        attributes: dict[str, Any]) -> Callable[..., Generator[Any, Any, Any]]:
        # A generator function itself (yield from forwards send, throw and close), so that
        # inspect.isgeneratorfunction() still holds for the decorated function.
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            return (yield from traced_generator(fn(*args, **kwargs), span_name, attributes))

        return wrapper

    @staticmethod
    def _wrap_async_generator(fn: Callable[..., AsyncGenerator[Any, Any]], span_name: str,
                              attributes: dict[str, Any]) -> Callable[..., AsyncGenerator[Any, Any]]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
            return traced_async_generator(fn(*args, **kwargs), span_name, attributes)

        return wrapper

    # ------------------------------------------------------------ as a context manager

    def __enter__(self) -> Span:
        from llamatelemetry._runtime import get_tracer

        if self._name is None:
            raise TypeError("llamatelemetry.trace() used as a context manager needs a name: trace(name='...').")
        manager = get_tracer().start_as_current_span(
            self._name, attributes=self._attributes, record_exception=False, set_status_on_exception=False
        )
        span = manager.__enter__()
        self._active.set((*self._active.get(), (manager, span)))
        return span

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        stack = self._active.get()
        manager, span = stack[-1]
        self._active.set(stack[:-1])
        if exc is not None:
            record_error(span, exc)
        manager.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)


def traced_generator(inner: Generator[Any, Any, Any], span_name: str,
                     attributes: Mapping[str, Any] | None = None) -> Generator[Any, Any, Any]:
    """Iterate ``inner`` inside one span that ends when it is exhausted, closed or fails."""
    from opentelemetry import context as context_api
    from opentelemetry import trace as trace_api

    from llamatelemetry._runtime import get_tracer

    span = get_tracer().start_span(span_name, attributes=attributes)
    span_context = trace_api.set_span_in_context(span)
    chunks = 0
    try:
        to_send: Any = None
        to_throw: BaseException | None = None
        while True:
            token = context_api.attach(span_context)
            try:
                if to_throw is not None:
                    exc, to_throw = to_throw, None
                    item = inner.throw(exc)
                else:
                    item = inner.send(to_send)
            except StopIteration as stop:
                return stop.value
            finally:
                context_api.detach(token)
            chunks += 1
            try:
                to_send = yield item
            except GeneratorExit:
                raise
            except BaseException as exc:  # thrown in by the consumer: pass it to the inner generator
                to_throw = exc
    except GeneratorExit:
        span.set_attribute(names.STREAM_CLOSED_EARLY, True)
        token = context_api.attach(span_context)
        try:
            inner.close()
        finally:
            context_api.detach(token)
        raise
    except BaseException as exc:
        record_error(span, exc)
        raise
    finally:
        span.set_attribute(names.STREAM_CHUNKS, chunks)
        span.end()


async def traced_async_generator(inner: AsyncGenerator[Any, Any], span_name: str,
                                 attributes: Mapping[str, Any] | None = None) -> AsyncGenerator[Any, Any]:
    """Iterate ``inner`` inside one span that ends when it is exhausted, closed or fails."""
    from opentelemetry import context as context_api
    from opentelemetry import trace as trace_api

    from llamatelemetry._runtime import get_tracer

    span = get_tracer().start_span(span_name, attributes=attributes)
    span_context = trace_api.set_span_in_context(span)
    chunks = 0
    try:
        to_send: Any = None
        to_throw: BaseException | None = None
        while True:
            token = context_api.attach(span_context)
            try:
                if to_throw is not None:
                    exc, to_throw = to_throw, None
                    item = await inner.athrow(exc)
                else:
                    item = await inner.asend(to_send)
            except StopAsyncIteration:
                return
            finally:
                context_api.detach(token)
            chunks += 1
            try:
                to_send = yield item
            except GeneratorExit:
                raise
            except BaseException as exc:
                if _is_cancellation(exc):
                    # The event loop cancels an abandoned stream's cleanup: that is a close, not a failure.
                    raise GeneratorExit from exc
                to_throw = exc
    except GeneratorExit:
        span.set_attribute(names.STREAM_CLOSED_EARLY, True)
        token = context_api.attach(span_context)
        try:
            await inner.aclose()
        finally:
            context_api.detach(token)
        raise
    except BaseException as exc:
        record_error(span, exc)
        raise
    finally:
        span.set_attribute(names.STREAM_CHUNKS, chunks)
        span.end()


@overload
def trace(name: F) -> F: ...
@overload
def trace(name: str | None = None, attributes: AttributeMap | None = None) -> _Instrumented: ...


def trace(name: str | F | None = None, attributes: AttributeMap | None = None) -> Any:
    """Trace a function: ``@trace``, ``@trace()`` or ``@trace(name=..., attributes=...)`` (default: its name)."""
    if callable(name):
        return _Instrumented(None, None, "function")(name)
    return _Instrumented(name, attributes, "function")


def span(name: str, attributes: AttributeMap | None = None) -> _Instrumented:
    """A named span: ``@span("load model")`` on a function, or ``with span("load model"):``."""
    if not isinstance(name, str) or not name:
        raise TypeError("llamatelemetry.span() needs a span name, e.g. span('load model').")
    return _Instrumented(name, attributes, "task")


def workflow(name: str, attributes: AttributeMap | None = None) -> _Instrumented:
    """A workflow span (a multi-step job such as fine-tune -> quantize -> deploy); decorator or context manager."""
    if not isinstance(name, str) or not name:
        raise TypeError("llamatelemetry.workflow() needs a workflow name, e.g. workflow('nightly-eval').")
    return _Instrumented(name, attributes, "workflow", workflow_name=name)
