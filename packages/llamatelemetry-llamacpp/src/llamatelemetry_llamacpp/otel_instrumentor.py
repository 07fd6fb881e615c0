"""``opentelemetry-instrument`` support: ``BaseInstrumentor`` adapters over this plugin's own instrumentation.

``opentelemetry-instrument python app.py`` loads every ``opentelemetry_instrumentor`` entry point.
This distribution registers two, each a thin adapter that switches on what the plugin already
does, so zero-code and ``instrument_llamacpp`` record the same spans:

- ``llamatelemetry_llama_cpp`` (``LlamaCppInstrumentor``): every ``llama_cpp.Llama`` made after it
  ran is instrumented as ``instrument_llamacpp(llm)`` would (``llama_cpp.Llama.__init__`` is
  wrapped); ``uninstrument()`` restores ``__init__`` and the instances it instrumented. Without
  llama-cpp-python it is skipped quietly (the loader sees ``ModuleNotFoundError``).
- ``llamatelemetry_llamacpp_client`` (``LlamaCppClientInstrumentor``): ``LlamaCppClient`` and
  ``AsyncLlamaCppClient`` record their calls by themselves whenever telemetry is active, which
  ``opentelemetry-instrument`` makes it (its SDK TracerProvider is the global one). This
  instrumentor turns that recording on (``instrument()``) and off (``uninstrument()``); the
  client also reads ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``, so naming the entry point there
  turns it off even though the loader then never runs this class.

Both export through the providers ``opentelemetry-instrument``'s distro configured (the global
ones): ``llamatelemetry.init()`` is not needed, and when the application calls it anyway it uses
those providers instead of replacing them (its default ``use_existing_providers=True``).
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable, Collection
from typing import Any, ClassVar, Final

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from llamatelemetry_llamacpp import telemetry as client_telemetry
from llamatelemetry_llamacpp.instrument import instrument_llamacpp, is_instrumented, uninstrument_llamacpp

__all__ = ["LLAMA_CPP_ENTRY_POINT", "CLIENT_ENTRY_POINT", "LlamaCppInstrumentor", "LlamaCppClientInstrumentor"]

log = logging.getLogger("llamatelemetry.llamacpp")

#: The ``opentelemetry_instrumentor`` entry-point names (what ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` takes).
LLAMA_CPP_ENTRY_POINT: Final = "llamatelemetry_llama_cpp"
CLIENT_ENTRY_POINT: Final = client_telemetry.CLIENT_ENTRY_POINT

_LLAMA_CPP_REQUIREMENT: Final = "llama-cpp-python >= 0.3.4"
_HTTPX_REQUIREMENT: Final = "httpx >= 0.27"


class LlamaCppInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Instruments every ``llama_cpp.Llama`` created while it is on, as ``instrument_llamacpp`` does.

    Example (what ``opentelemetry-instrument`` does for you)::

        LlamaCppInstrumentor().instrument()
        llm = llama_cpp.Llama("model.gguf")   # instrumented
    """

    #: ``llama_cpp.Llama.__init__`` as it was (``None``: not instrumented); one per process, like the patch.
    _original_init: ClassVar[Callable[..., None] | None] = None
    _instances: ClassVar[weakref.WeakSet[Any]] = weakref.WeakSet()

    def instrumentation_dependencies(self) -> Collection[str]:
        """The library this instruments, as the ``instruments-any`` extra names it."""
        return (_LLAMA_CPP_REQUIREMENT,)

    def _instrument(self, **kwargs: Any) -> None:
        import llama_cpp  # absent: ModuleNotFoundError, which opentelemetry-instrument's loader skips quietly

        cls = llama_cpp.Llama
        if type(self)._original_init is not None:
            return
        original: Callable[..., None] = cls.__dict__["__init__"]
        instances = type(self)._instances

        @functools.wraps(original)
        def __init__(llm: Any, *args: Any, **options: Any) -> None:
            original(llm, *args, **options)
            try:
                if not is_instrumented(llm):
                    instrument_llamacpp(llm)
                    instances.add(llm)
            except Exception:  # telemetry never breaks the model: it runs uninstrumented
                log.warning("instrumenting a llama_cpp.Llama failed; it runs without spans", exc_info=True)

        type(self)._original_init = original
        setattr(cls, "__init__", __init__)  # noqa: B010 - a method replaced on the class, on purpose

    def _uninstrument(self, **kwargs: Any) -> None:
        import llama_cpp

        original = type(self)._original_init
        if original is not None:
            setattr(llama_cpp.Llama, "__init__", original)  # noqa: B010
            type(self)._original_init = None
        for llm in list(type(self)._instances):
            uninstrument_llamacpp(llm)
        type(self)._instances.clear()


class LlamaCppClientInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Turns the llama.cpp clients' own call recording on (``instrument()``) or off (``uninstrument()``).

    Example::

        LlamaCppClientInstrumentor().uninstrument()   # LlamaCppClient calls are no longer recorded
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        """The library the clients are built on, as the ``instruments-any`` extra names it."""
        return (_HTTPX_REQUIREMENT,)

    def _instrument(self, **kwargs: Any) -> None:
        client_telemetry.set_client_recording(True)

    def _uninstrument(self, **kwargs: Any) -> None:
        client_telemetry.set_client_recording(False)
