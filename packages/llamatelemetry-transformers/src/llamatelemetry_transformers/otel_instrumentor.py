"""``opentelemetry-instrument`` support: a ``BaseInstrumentor`` adapter over ``instrument_transformers``.

The entry point ``llamatelemetry_transformers`` (group ``opentelemetry_instrumentor``) makes
``opentelemetry-instrument python app.py`` record every transformers ``generate`` call with no
code change: ``GenerationMixin.generate`` is wrapped on the class, and each call is recorded by
the same code as an ``instrument_transformers(model)`` model (span, GenAI attributes and metrics,
``transformers.prefill`` / ``transformers.decode`` children, request hooks). The first call on a
model gives it the instrumentation state ``instrument_transformers`` keeps (model name, no
tokenizer): calling ``instrument_transformers(model, tokenizer)`` as well adds the tokenizer
(content capture), and the model stays picklable, since nothing is patched on the instance.

Without transformers the loader skips it quietly (its ``instruments`` extra is unsatisfied).
Instrumenting imports transformers (and torch) at start-up: name the entry point in
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` where the application does not generate with it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection
from typing import Any, ClassVar, Final

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from llamatelemetry.inference.recording import telemetry_active
from llamatelemetry_transformers import instrument as _instrument_module

__all__ = ["ENTRY_POINT", "TransformersInstrumentor"]

log = logging.getLogger("llamatelemetry.transformers")

#: The ``opentelemetry_instrumentor`` entry-point name (what ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` takes).
ENTRY_POINT: Final = "llamatelemetry_transformers"
_TRANSFORMERS_REQUIREMENT: Final = "transformers >= 4.45"


def _state_of(model: Any) -> Any:
    """The model's instrumentation state, made on its first zero-code call (as ``instrument_transformers`` keeps it)."""
    module = _instrument_module
    state = model.__dict__.get(module._STATE)
    if not isinstance(state, module._ModelState):
        state = module._ModelState(previous=module._MISSING, tokenizer=None, model_name=module._model_name(model))
        model.__dict__[module._STATE] = state
    return state


class TransformersInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Records every transformers ``generate`` call while it is on.

    Example (what ``opentelemetry-instrument`` does for you)::

        TransformersInstrumentor().instrument()
        model.generate(**inputs)   # a GenAI span with prefill/decode children
    """

    #: ``GenerationMixin.generate`` as it was (``None``: not instrumented).
    _original: ClassVar[Callable[..., Any] | None] = None

    def instrumentation_dependencies(self) -> Collection[str]:
        """The library this instruments, as the ``instruments`` extra names it."""
        return (_TRANSFORMERS_REQUIREMENT,)

    def _instrument(self, **kwargs: Any) -> None:
        from transformers.generation.utils import GenerationMixin

        if type(self)._original is not None:
            return
        original: Callable[..., Any] = GenerationMixin.__dict__["generate"]
        module = _instrument_module

        @functools.wraps(original)
        def generate(model: Any, *args: Any, **options: Any) -> Any:
            # Inside a recorded generate (an instance-instrumented model's, or an assistant model's): no second span.
            if module._inside.get() or not telemetry_active():
                return original(model, *args, **options)
            try:
                _state_of(model)
            except Exception:  # telemetry never breaks generation
                log.debug("could not prepare a model for zero-code tracing; it generates untraced", exc_info=True)
                return original(model, *args, **options)
            return module._traced_generate(model, functools.partial(original, model), args, options)

        type(self)._original = original
        setattr(GenerationMixin, "generate", generate)  # noqa: B010 - a method replaced on the class, on purpose

    def _uninstrument(self, **kwargs: Any) -> None:
        from transformers.generation.utils import GenerationMixin

        original = type(self)._original
        if original is not None:
            setattr(GenerationMixin, "generate", original)  # noqa: B010
            type(self)._original = None
