"""``LlamaCppServerMetrics``: a llama.cpp server's ``/metrics`` and ``/slots`` as OpenTelemetry instruments.

Example::

    from llamatelemetry.llama import LlamaCppServerMetrics

    llamatelemetry.init(service_name="chat-api")
    bridge = LlamaCppServerMetrics("http://127.0.0.1:8090")   # the server runs with --metrics
    ...
    bridge.stop()

Every ``llamacpp:<name>`` family of ``/metrics`` becomes ``llamatelemetry.llama_cpp.server.<name>``:
an ObservableCounter for a Prometheus counter (``_total`` dropped, as OpenTelemetry names go) and
an ObservableGauge otherwise. ``/slots`` gives ``llamatelemetry.llama_cpp.server.slots.busy`` and
``.total``. Every observation carries ``server.address`` and ``server.port`` beside the
Prometheus labels.

The set of families differs between llama.cpp builds, so every one is optional: the bridge
registers the names the server exposes when it starts. Each collection scrapes the server once
(all callbacks of that collection share the scrape); a failed scrape is logged once per outage
and yields no observations; nothing is ever raised into the OpenTelemetry SDK. A server restart
resets its counters: the bridge carries each counter on from its last value, so an exported
counter never decreases (no negative deltas).
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs

from llamatelemetry.semconv import gen_ai
from llamatelemetry_llamacpp import semconv as names
from llamatelemetry_llamacpp.errors import LlamaCppError, ServerFeatureDisabledError

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation

    from llamatelemetry_llamacpp.client import LlamaCppClient

__all__ = ["LlamaCppServerMetrics", "PrometheusFamily", "PrometheusSample", "parse_prometheus_text",
           "instrument_name"]

log = logging.getLogger("llamatelemetry.llama_cpp")

#: llama.cpp's prefix on /metrics.
PROMETHEUS_PREFIX: Final = "llamacpp:"

# Units of the families llama.cpp has today; a family not listed gets no unit rather than a guess.
_UNITS: Final[dict[str, str]] = {
    "prompt_tokens": "{token}", "prompt_tokens_cached": "{token}", "tokens_predicted": "{token}",
    "prompt_seconds": "s", "tokens_predicted_seconds": "s", "n_decode": "{call}", "n_tokens_max": "{token}",
    "spec_decode_num_draft_tokens": "{token}", "spec_decode_num_accepted_tokens": "{token}",
    "spec_decode_num_drafts": "{step}", "prompt_tokens_seconds": "{token}/s",
    "predicted_tokens_seconds": "{token}/s", "requests_processing": "{request}", "requests_deferred": "{request}",
    "n_busy_slots_per_decode": "{slot}", "kv_cache_usage_ratio": "1", "kv_cache_tokens": "{token}",
}

# Label values are quoted strings that may hold "}" (and escaped quotes): the label set ends at the first
# "}" outside quotes.
_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>(?:[^"}]|"(?:[^"\\]|\\.)*")*)\})?'
                     r"\s+(?P<value>\S+)")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


@attrs.frozen
class PrometheusSample:
    """One sample line: its labels and value."""

    labels: Mapping[str, str]
    value: float


@attrs.frozen
class PrometheusFamily:
    """A metric family of Prometheus text: name, ``# TYPE`` (``untyped`` when absent), ``# HELP`` and samples."""

    name: str
    type: str = "untyped"
    help: str = ""
    samples: tuple[PrometheusSample, ...] = ()


_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_UNESCAPED: Final[dict[str, str]] = {"n": "\n", "\\": "\\", '"': '"'}


def _labels(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    # One pass, so an escaped backslash before an "n" stays a backslash and an "n".
    return {key: _ESCAPE.sub(lambda m: _UNESCAPED.get(m[1], m[0]), value) for key, value in _LABEL.findall(text)}


def _value(text: str) -> float | None:
    try:
        value = float(text)  # also reads Prometheus' +Inf, -Inf and NaN
    except ValueError:
        return None
    return None if math.isnan(value) else value


def parse_prometheus_text(text: str) -> dict[str, PrometheusFamily]:
    """Parse Prometheus text exposition into families by name (malformed lines are skipped)."""
    types: dict[str, str] = {}
    helps: dict[str, str] = {}
    samples: dict[str, list[PrometheusSample]] = {}
    # Lines end at \n only (the exposition format's rule); splitlines() would also cut a label value at \x1e.
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("TYPE", "HELP"):
                target = types if parts[1] == "TYPE" else helps
                target[parts[2]] = parts[3].strip() if len(parts) > 3 else ""
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        value = _value(match["value"])
        if value is not None:
            samples.setdefault(match["name"], []).append(PrometheusSample(_labels(match["labels"]), value))
    families: dict[str, PrometheusFamily] = {}
    for name in dict.fromkeys([*types, *samples]):
        families[name] = PrometheusFamily(name=name, type=types.get(name, "untyped"), help=helps.get(name, ""),
                                          samples=tuple(samples.get(name, ())))
    return families


def instrument_name(family: PrometheusFamily) -> str:
    """``llamacpp:prompt_tokens_total`` (counter) -> ``llamatelemetry.llama_cpp.server.prompt_tokens``."""
    short = family.name.removeprefix(PROMETHEUS_PREFIX)
    if family.type == "counter":
        short = short.removesuffix("_total")
    return names.SERVER_METRIC_PREFIX + short


class _Scrape:
    """One collection's view of the server: each endpoint is fetched at most once, on first need."""

    def __init__(self, fetch_metrics: Callable[[], str], fetch_slots: Callable[[], list[dict[str, Any]]]) -> None:
        self._fetch_metrics = fetch_metrics
        self._fetch_slots = fetch_slots
        self._families: dict[str, PrometheusFamily] | None = None
        self._slots: list[dict[str, Any]] | None = None
        self.metrics_failed = False
        self.slots_failed = False

    def families(self, on_error: Callable[[str, Exception], None]) -> dict[str, PrometheusFamily] | None:
        if self._families is None and not self.metrics_failed:
            try:
                self._families = parse_prometheus_text(self._fetch_metrics())
            except Exception as exc:  # a scrape never raises into the SDK
                self.metrics_failed = True
                on_error("/metrics", exc)
        return self._families

    def slots(self, on_error: Callable[[str, Exception], None]) -> list[dict[str, Any]] | None:
        if self._slots is None and not self.slots_failed:
            try:
                self._slots = self._fetch_slots()
            except Exception as exc:
                self.slots_failed = True
                on_error("/slots", exc)
        return self._slots


def _slot_busy(slot: Mapping[str, Any]) -> bool:
    if "is_processing" in slot:
        return bool(slot["is_processing"])
    # Older builds report a state number: 0 is idle.
    return bool(slot.get("state", 0))


class LlamaCppServerMetrics:
    """Registers a llama.cpp server's ``/metrics`` families and ``/slots`` counts as observable instruments.

    ``client_or_url`` is a ``LlamaCppClient`` (its base URL and API key are used) or the
    server's URL. ``meter`` defaults to the plugin's meter on llamatelemetry's provider (after
    ``init()``) or the global one. ``scrape_timeout`` bounds each scrape, which runs on the
    SDK's collection thread. Construction reads the server once to learn which families it
    has, and raises ``ServerUnavailableError`` when no server answers; a server without
    ``--metrics`` (or ``/slots``) only loses those instruments, with a warning.

    Example::

        bridge = LlamaCppServerMetrics(client)
        print(bridge.instrument_names)   # ['llamatelemetry.llama_cpp.server.prompt_tokens', ...]
    """

    def __init__(self, client_or_url: LlamaCppClient | str, meter: Meter | None = None, *,
                 include_slots: bool = True, scrape_timeout: float = 5.0) -> None:
        from llamatelemetry_llamacpp.client import AsyncLlamaCppClient, LlamaCppClient

        if isinstance(client_or_url, AsyncLlamaCppClient):
            raise TypeError("LlamaCppServerMetrics needs a LlamaCppClient or a URL: the SDK calls its callbacks "
                            "synchronously, so it cannot use an AsyncLlamaCppClient.")
        if isinstance(client_or_url, str):
            self._client = LlamaCppClient(client_or_url, retries=0, timeout=scrape_timeout,
                                          connect_timeout=min(scrape_timeout, 2.0))
            self._owns_client = True
        elif isinstance(client_or_url, LlamaCppClient):
            self._client = client_or_url
            self._owns_client = False
        else:
            raise TypeError("client_or_url must be a LlamaCppClient or a URL string, "
                            f"not {type(client_or_url).__name__}.")
        if meter is None:
            from llamatelemetry.otel import get_meter
            from llamatelemetry_llamacpp import __version__

            meter = get_meter("llamatelemetry_llamacpp", __version__)
        self._meter = meter
        self._scrape_timeout = scrape_timeout
        self._base_attributes: dict[str, Any] = {gen_ai.SERVER_ADDRESS: self._client.server_address,
                                                 gen_ai.SERVER_PORT: self._client.server_port}
        self._lock = threading.Lock()
        self._current: _Scrape | None = None
        self._consumed: set[str] = set()
        self._failing: set[str] = set()
        self._stopped = False
        self._scrape_count = 0
        #: Per counter sample (family, labels): the last value the server reported and the restart offset.
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[float, float]] = {}
        self._names: list[str] = []
        try:
            self._register(include_slots)
        except BaseException:
            self._close_client()
            raise

    # ------------------------------------------------------------------ set-up

    def _register(self, include_slots: bool) -> None:
        try:
            families = parse_prometheus_text(self._fetch_metrics())
        except ServerFeatureDisabledError:
            log.warning("the llama.cpp server at %s has no /metrics (start it with --metrics); only its slots "
                        "are bridged", self._client.base_url)
            families = {}
        for family in families.values():
            if family.name.startswith(PROMETHEUS_PREFIX) and family.type in ("counter", "gauge", "untyped"):
                self._add_family(family)
        if include_slots:
            try:
                self._fetch_slots()
            except ServerFeatureDisabledError:
                log.warning("the llama.cpp server at %s has no /slots (start it with --slots); slot counts are "
                            "not bridged", self._client.base_url)
            else:
                self._add_slots()

    def _add_family(self, family: PrometheusFamily) -> None:
        name = instrument_name(family)
        unit = _UNITS.get(name.removeprefix(names.SERVER_METRIC_PREFIX), "")
        description = family.help or f"llama.cpp server metric {family.name}"

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return self._observe_family(name, family.name)

        if family.type == "counter":
            self._meter.create_observable_counter(name, callbacks=[observe], unit=unit, description=description)
        else:
            self._meter.create_observable_gauge(name, callbacks=[observe], unit=unit, description=description)
        self._names.append(name)

    def _add_slots(self) -> None:
        def busy(options: CallbackOptions) -> Iterable[Observation]:
            return self._observe_slots(names.METRIC_SERVER_SLOTS_BUSY, lambda slots: sum(map(_slot_busy, slots)))

        def total(options: CallbackOptions) -> Iterable[Observation]:
            return self._observe_slots(names.METRIC_SERVER_SLOTS_TOTAL, len)

        self._meter.create_observable_gauge(names.METRIC_SERVER_SLOTS_BUSY, callbacks=[busy], unit="{slot}",
                                            description="llama.cpp server slots processing a request (/slots).")
        self._meter.create_observable_gauge(names.METRIC_SERVER_SLOTS_TOTAL, callbacks=[total], unit="{slot}",
                                            description="llama.cpp server slots (/slots).")
        self._names += [names.METRIC_SERVER_SLOTS_BUSY, names.METRIC_SERVER_SLOTS_TOTAL]

    # ------------------------------------------------------------------ scraping

    def _fetch_metrics(self) -> str:
        with self._lock:
            self._scrape_count += 1
        # No retries: a scrape runs on the SDK's collection thread, and the next collection retries anyway.
        return self._client.metrics_text(timeout=self._scrape_timeout, retries=0)

    def _fetch_slots(self) -> list[dict[str, Any]]:
        return self._client.slots(timeout=self._scrape_timeout, retries=0)

    def _scrape_for(self, key: str) -> _Scrape:
        # A collection calls each instrument's callback once: seeing one again means a new collection.
        with self._lock:
            if self._current is None or key in self._consumed:
                self._current = _Scrape(self._fetch_metrics, self._fetch_slots)
                self._consumed = set()
            self._consumed.add(key)
            return self._current

    def _scrape_failed(self, endpoint: str, exc: Exception) -> None:
        if endpoint not in self._failing:
            self._failing.add(endpoint)
            reason = str(exc) if isinstance(exc, LlamaCppError) else f"{type(exc).__name__}: {exc}"
            log.warning("scraping %s%s failed; its llama.cpp server metrics are skipped until it answers again "
                        "(further failures are logged at debug level): %s", self._client.base_url, endpoint, reason)
        else:
            log.debug("scraping %s%s failed again", self._client.base_url, endpoint, exc_info=True)

    def _recovered(self, endpoint: str) -> None:
        if endpoint in self._failing:
            self._failing.discard(endpoint)
            log.info("scraping %s%s works again", self._client.base_url, endpoint)

    def _observe_family(self, instrument: str, family_name: str) -> list[Observation]:
        from opentelemetry.metrics import Observation

        if self._stopped:
            return []
        try:
            families = self._scrape_for(instrument).families(self._scrape_failed)
            if families is None:
                return []
            self._recovered("/metrics")
            family = families.get(family_name)
            if family is None:
                return []  # the server stopped exposing it (a restart with another build)
            if family.type == "counter":
                return [Observation(self._monotonic(family_name, sample), {**self._base_attributes, **sample.labels})
                        for sample in family.samples]
            return [Observation(sample.value, {**self._base_attributes, **sample.labels})
                    for sample in family.samples]
        except Exception:  # never into the SDK
            log.debug("observing %s failed", instrument, exc_info=True)
            return []

    def _monotonic(self, family_name: str, sample: PrometheusSample) -> float:
        """The counter's value carried across server restarts, so that a counter never goes down.

        A restarted server counts from zero again; reported as is, the SDK would turn the drop into a
        negative delta. The last value before the restart becomes an offset added from then on (what
        the server counted between the last scrape and the restart is lost either way).
        """
        key = (family_name, tuple(sorted(sample.labels.items())))
        with self._lock:
            last, offset = self._counters.get(key, (0.0, 0.0))
            if sample.value < last:
                offset += last
                log.info("the llama.cpp server at %s restarted (%s went from %g back to %g); its counters "
                         "continue from their last values", self._client.base_url, family_name, last, sample.value)
            self._counters[key] = (sample.value, offset)
        return sample.value + offset

    def _observe_slots(self, instrument: str, count: Callable[[list[dict[str, Any]]], int]) -> list[Observation]:
        from opentelemetry.metrics import Observation

        if self._stopped:
            return []
        try:
            slots = self._scrape_for(instrument).slots(self._scrape_failed)
            if slots is None:
                return []
            self._recovered("/slots")
            return [Observation(count(slots), dict(self._base_attributes))]
        except Exception:
            log.debug("observing %s failed", instrument, exc_info=True)
            return []

    # ------------------------------------------------------------------ public

    @property
    def instrument_names(self) -> list[str]:
        """The instruments registered, in order."""
        return list(self._names)

    @property
    def scrape_count(self) -> int:
        """How many times ``/metrics`` was fetched (once at start, then at most once per collection)."""
        return self._scrape_count

    def stop(self) -> None:
        """Stop observing: callbacks yield nothing from now on, and a client made from a URL is closed.

        OpenTelemetry has no way to remove an instrument, so the names stay registered, empty.
        """
        self._stopped = True
        self._close_client()

    def _close_client(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> LlamaCppServerMetrics:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else f"{len(self._names)} instruments"
        return f"<LlamaCppServerMetrics {self._client.base_url} {state}>"
