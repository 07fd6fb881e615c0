"""Transport: the server's URL, one request description, retries, error mapping and the raw send.

``Transport`` holds everything the sync and async clients share: settings, the parsed endpoint,
building an ``httpx.Request`` from an ``HttpRequest``, which failures are retried and how long to
wait, and how httpx failures and HTTP error answers become this plugin's error classes.
``SyncTransport.send`` and ``AsyncTransport.send`` are the only code that differs: the I/O.

Trace context. Every request carries the current context through the globally configured
propagator (``opentelemetry.propagate.inject``: W3C ``traceparent``/``tracestate`` and ``baggage``
by default, whatever ``OTEL_PROPAGATORS`` names otherwise), so a llama.cpp server built with
tracing parents its spans under the client's call span. ``propagate=False`` leaves the headers
out for this transport; ``OTEL_PROPAGATORS=none`` leaves them out for every library in the process.

Example::

    transport = SyncTransport("LlamaCppClient", "http://127.0.0.1:8090")
    response = transport.send(HttpRequest("GET", "/health", retries=0, timeout=2.0))
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import attrs
from opentelemetry import propagate as _propagate

from llamatelemetry.errors import ValidationError
from llamatelemetry_llamacpp.errors import (
    LlamaCppError,
    ServerTimeoutError,
    ServerUnavailableError,
    StreamProtocolError,
    http_error,
)

try:
    import httpx
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "The llama.cpp server client needs httpx, which is not installed. Install it with: pip install httpx"
    ) from exc

__all__ = ["DEFAULT_BASE_URL", "Endpoint", "HttpRequest", "Transport", "SyncTransport", "AsyncTransport"]

DEFAULT_BASE_URL: Final = "http://127.0.0.1:8090"
_MAX_BACKOFF_S: Final = 8.0


@attrs.frozen
class Endpoint:
    """A llama.cpp server's base URL, split into what requests, messages and spans need."""

    base_url: str
    #: The URL for messages: no user-info, so credentials in a URL never reach a log.
    display_url: str
    address: str
    port: int

    @classmethod
    def parse(cls, base_url: str, owner: str = "LlamaCppClient") -> Endpoint:
        """Read an ``http(s)://host[:port][/prefix][/v1]`` URL; anything else is a ``ValidationError``."""
        parts = urlsplit(base_url.strip()) if isinstance(base_url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValidationError(owner, "base_url", base_url, f"an http(s) URL such as {DEFAULT_BASE_URL!r}")
        path = parts.path.rstrip("/")
        if path.endswith("/v1"):
            # An OpenAI-style base URL: the client adds /v1 itself for the OpenAI-compatible routes.
            path = path[:-3]
        port = parts.port or (443 if parts.scheme == "https" else 80)
        netloc = parts.netloc.rpartition("@")[2]
        display = urlunsplit((parts.scheme, netloc, path, "", ""))
        full = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        return cls(base_url=full, display_url=display, address=parts.hostname, port=port)


@attrs.frozen
class HttpRequest:
    """One HTTP request as both clients describe it; ``None`` settings take the client's own."""

    method: str
    path: str
    #: The JSON body (``None``: no body).
    payload: Any = attrs.field(default=None, repr=False)
    #: Return as soon as the headers arrived, for reading the body as a stream (an event stream: the
    #: request says ``Connection: close``, as llama.cpp's server closes it after the stream anyway).
    stream: bool = False
    #: Retries after a connection failure or a 503 (model loading).
    retries: int | None = None
    #: Seconds allowed for the whole exchange instead of the client's read timeout.
    timeout: float | None = None


class Transport:
    """Settings and everything about sending a request except the I/O itself (see the subclasses)."""

    def __init__(self, owner: str, base_url: str = DEFAULT_BASE_URL, *, api_key: str | None = None,
                 timeout: float | None = 60.0, connect_timeout: float | None = 5.0, retries: int = 2,
                 backoff: float = 0.5, propagate: bool = True) -> None:
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValidationError(owner, "retries", retries, "an integer >= 0")
        for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
            if value is not None and (not isinstance(value, (int, float)) or value <= 0):
                raise ValidationError(owner, name, value, "a positive number of seconds, or None for no limit")
        if not isinstance(backoff, (int, float)) or backoff < 0:
            raise ValidationError(owner, "backoff", backoff, "a number of seconds >= 0")
        self.endpoint = Endpoint.parse(base_url, owner)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.backoff = float(backoff)
        self.api_key = api_key or None
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        #: Whether each request carries the current trace context (``traceparent``, ...).
        self.propagate = bool(propagate)

    # ------------------------------------------------------------------ shared by both sends

    def _httpx_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, connect=self.connect_timeout)

    def _build(self, client: httpx.Client | httpx.AsyncClient, request: HttpRequest) -> httpx.Request:
        limit = httpx.Timeout(request.timeout) if request.timeout is not None else httpx.USE_CLIENT_DEFAULT
        headers: dict[str, str] = {}
        if request.stream:
            # llama.cpp's server closes the connection after every streamed response. Saying so up front
            # keeps the pool from reusing it: reused before that close arrived, it failed the next request
            # ("Server disconnected without sending a response", or a reset) after the server never saw it.
            headers["Connection"] = "close"
        if self.propagate:
            # The context current now: the call's span while a call is recorded (each retry re-injects it).
            _propagate.inject(headers)
        return client.build_request(request.method, request.path, json=request.payload, timeout=limit,
                                    headers=headers or None)

    def _attempts(self, request: HttpRequest) -> int:
        return self.retries if request.retries is None else request.retries

    def _delay(self, attempt: int) -> float:
        return float(min(self.backoff * 2**attempt, _MAX_BACKOFF_S))

    def _after_transport_error(self, exc: httpx.TransportError, request: HttpRequest, attempt: int) -> float:
        """The wait before the next attempt; raises the mapped error when there is none."""
        # Only failures before the request reached the server: resending cannot run a generation twice.
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)) and attempt < self._attempts(request):
            return self._delay(attempt)
        raise self._transport_error(exc, request) from exc

    def _after_error_status(self, response: httpx.Response, content: bytes, request: HttpRequest,
                            attempt: int) -> float:
        """The wait before the next attempt after an HTTP error; raises the mapped error when there is none."""
        if response.status_code == 503 and attempt < self._attempts(request):
            return self._delay(attempt)
        raise http_error(response.status_code, content, method=request.method, path=request.path,
                         url=self.endpoint.display_url, secret=self.api_key)

    def _transport_error(self, exc: httpx.TransportError, request: HttpRequest) -> LlamaCppError:
        url = self.endpoint.display_url
        if isinstance(exc, httpx.ConnectTimeout):
            # A request's own timeout bounds its connection too (httpx.Timeout(t) sets every phase).
            limit = request.timeout if request.timeout is not None else self.connect_timeout
            return ServerUnavailableError(url, f"no answer within the connect timeout of {limit} s")
        if isinstance(exc, httpx.TimeoutException):
            phase = {httpx.ReadTimeout: "read", httpx.WriteTimeout: "write", httpx.PoolTimeout: "pool"}.get(
                type(exc), "read")
            limit = request.timeout if request.timeout is not None else self.timeout
            return ServerTimeoutError(url, request.method, request.path, limit, phase)
        if isinstance(exc, httpx.ConnectError):
            text = str(exc)
            reason = "connection refused" if "refused" in text.lower() else (text or type(exc).__name__)
            return ServerUnavailableError(url, reason)
        return ServerUnavailableError(url, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    def decode(self, response: httpx.Response, path: str) -> Any:
        """The response's JSON; a body that is not JSON is a ``StreamProtocolError``."""
        try:
            return response.json()
        except ValueError:
            raise StreamProtocolError(self.endpoint.display_url, path,
                                      f"the response body is not JSON ({response.text[:60]!r})") from None

    def not_an_event_stream(self, response: httpx.Response, path: str) -> StreamProtocolError | None:
        """The error for a stream request answered without ``text/event-stream`` (``None`` when it is one)."""
        content_type = response.headers.get("content-type", "")
        if "text/event-stream" in content_type:
            return None
        return StreamProtocolError(self.endpoint.display_url, path, "expected an event stream (text/event-stream), "
                                                                    f"got {content_type or 'no content type'}")

    def _read_limit(self, exc: httpx.TimeoutException) -> float | None:
        """The read timeout the timed-out request ran under: its own when it had one, else the client's."""
        try:
            # httpx attaches the request to errors raised while reading a body; its timeout is what applied.
            limits = exc.request.extensions.get("timeout")
        except RuntimeError:  # no request attached
            return self.timeout
        if isinstance(limits, dict) and "read" in limits:
            read = limits["read"]
            return float(read) if isinstance(read, (int, float)) else None
        return self.timeout

    def stream_failure(self, exc: BaseException, path: str) -> BaseException:
        """What a failure while reading a stream's body raises: httpx failures become this plugin's errors."""
        if isinstance(exc, httpx.TimeoutException):
            return ServerTimeoutError(self.endpoint.display_url, "POST", path, self._read_limit(exc), "read")
        if isinstance(exc, httpx.HTTPError):
            return StreamProtocolError(self.endpoint.display_url, path,
                                       f"the connection broke mid-stream ({type(exc).__name__}: {exc})")
        return exc


class SyncTransport(Transport):
    """The blocking send, over one ``httpx.Client`` connection pool."""

    def __init__(self, owner: str, base_url: str = DEFAULT_BASE_URL, **settings: Any) -> None:
        super().__init__(owner, base_url, **settings)
        self._http = httpx.Client(base_url=self.endpoint.base_url, headers=self.headers,
                                  timeout=self._httpx_timeout())

    def send(self, request: HttpRequest) -> httpx.Response:
        """Send ``request``, retrying as allowed; an answer below 400 is returned, anything else raises."""
        attempt = 0
        while True:
            try:
                response = self._http.send(self._build(self._http, request), stream=request.stream)
            except httpx.TransportError as exc:
                time.sleep(self._after_transport_error(exc, request, attempt))
                attempt += 1
                continue
            if response.status_code < 400:
                return response
            try:
                content = response.read()
            except httpx.HTTPError:
                content = b""
            finally:
                response.close()
            time.sleep(self._after_error_status(response, content, request, attempt))
            attempt += 1

    def close(self) -> None:
        """Close the connection pool; calling it twice is harmless."""
        self._http.close()


class AsyncTransport(Transport):
    """The asyncio send, over one ``httpx.AsyncClient`` connection pool."""

    def __init__(self, owner: str, base_url: str = DEFAULT_BASE_URL, **settings: Any) -> None:
        super().__init__(owner, base_url, **settings)
        self._http = httpx.AsyncClient(base_url=self.endpoint.base_url, headers=self.headers,
                                       timeout=self._httpx_timeout())

    async def send(self, request: HttpRequest) -> httpx.Response:
        """Send ``request``, retrying as allowed; an answer below 400 is returned, anything else raises."""
        attempt = 0
        while True:
            try:
                response = await self._http.send(self._build(self._http, request), stream=request.stream)
            except httpx.TransportError as exc:
                await asyncio.sleep(self._after_transport_error(exc, request, attempt))
                attempt += 1
                continue
            if response.status_code < 400:
                return response
            try:
                content = await response.aread()
            except httpx.HTTPError:
                content = b""
            finally:
                await response.aclose()
            await asyncio.sleep(self._after_error_status(response, content, request, attempt))
            attempt += 1

    async def aclose(self) -> None:
        """Close the connection pool; calling it twice is harmless."""
        await self._http.aclose()
