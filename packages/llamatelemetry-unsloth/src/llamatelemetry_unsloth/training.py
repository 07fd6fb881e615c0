"""One traced ``Trainer.train()`` call: its span, a callback that turns each log into an event, token counting.

Imported by the ``Trainer.train`` patch (so transformers is already loaded). The callback is a
``transformers.TrainerCallback`` subclass added to the trainer for the call and removed after it;
tokens are counted from each batch's attention mask in a wrapper around the trainer's own
``training_step``, summed on the device and read once per log, so training adds no sync per step.
"""

from __future__ import annotations

import importlib
import logging
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from llamatelemetry_unsloth import semconv as names
from llamatelemetry_unsloth.instrument import adapter_facts, instruments, model_facts, traced_train

if TYPE_CHECKING:
    import contextlib

    from opentelemetry.trace import Span

__all__ = ["TrainRun", "callback_class"]

log = logging.getLogger("llamatelemetry.unsloth")

_callback: type | None = None


def callback_class() -> type:
    """``LlamaTelemetryCallback``: a ``transformers.TrainerCallback`` that hands each log to its ``TrainRun``."""
    global _callback
    if _callback is None:
        base = importlib.import_module("transformers").TrainerCallback

        def __init__(self: Any, run: TrainRun) -> None:
            self.run = run

        def on_log(self: Any, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            self.run.logged(state, logs or {})

        _callback = type("LlamaTelemetryCallback", (base,), {
            "__init__": __init__, "on_log": on_log, "__module__": __name__,
            "__doc__": "Records each Trainer log (loss, learning rate, grad norm) on llamatelemetry's train span."})
    return _callback


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    item = getattr(value, "item", None)  # a 0-d tensor
    if callable(item):
        try:
            return float(item())
        except (TypeError, ValueError, RuntimeError):
            return None
    return None


class TrainRun:
    """The telemetry of one ``train()`` call; a context manager around it."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.span: Span | None = None
        self._span_cm: contextlib.AbstractContextManager[Span | None] | None = None
        self._callback: Any = None
        self._had_step_attribute = False
        self._pending_tokens: Any = 0
        self.tokens = 0
        self._window_tokens = 0
        self._last_log_s = 0.0
        self._last_step = 0
        self._started = 0.0
        self._metric_attributes: dict[str, str] = {}

    # ------------------------------------------------------------------ lifecycle

    def _start_attributes(self) -> dict[str, Any]:
        trainer = self.trainer
        args = getattr(trainer, "args", None)
        attributes: dict[str, Any] = {names.TRAINER: type(trainer).__name__}
        model = getattr(trainer, "model", None)
        facts = model_facts(model) if model is not None else {}
        if names.MODEL in facts:
            attributes[names.MODEL] = facts[names.MODEL]
        max_steps = getattr(args, "max_steps", None)
        if isinstance(max_steps, int) and max_steps > 0:
            attributes[names.MAX_STEPS] = max_steps
        for attribute, key in ((names.BATCH_SIZE, "per_device_train_batch_size"),
                               (names.GRADIENT_ACCUMULATION, "gradient_accumulation_steps")):
            value = getattr(args, key, None)
            if isinstance(value, int):
                attributes[attribute] = value
        if model is not None and getattr(model, "peft_config", None):
            attributes.update(adapter_facts(model))
        return attributes

    def __enter__(self) -> TrainRun:
        attributes: dict[str, Any] = self._safe(self._start_attributes, {})
        self._span_cm = traced_train(attributes)
        self.span = self._span_cm.__enter__()
        if self.span is None:
            return self
        self._metric_attributes = {k: str(v) for k, v in attributes.items() if k in (names.TRAINER, names.MODEL)}
        self._started = self._last_log_s = time.perf_counter()
        self._last_step = int(getattr(getattr(self.trainer, "state", None), "global_step", 0) or 0)
        self._safe(self._attach, None)
        return self

    def _attach(self) -> None:
        self._callback = callback_class()(self)
        self.trainer.add_callback(self._callback)
        self._had_step_attribute = "training_step" in vars(self.trainer)
        step = self.trainer.training_step

        def training_step(model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            self._count(inputs)
            return step(model, inputs, *args, **kwargs)

        self.trainer.training_step = training_step

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool | None:
        if self.span is not None:
            self._safe(self._detach, None)
            elapsed = time.perf_counter() - self._started
            self._safe(lambda: instruments().duration.record(elapsed, {
                **self._metric_attributes, names.OUTCOME: "error" if exc else "ok"}), None)
        assert self._span_cm is not None
        return self._span_cm.__exit__(exc_type, exc, tb)

    def _detach(self) -> None:
        if self._callback is not None:
            self.trainer.remove_callback(self._callback)
        if not self._had_step_attribute:
            vars(self.trainer).pop("training_step", None)

    # ------------------------------------------------------------------ figures

    def _count(self, inputs: Any) -> None:
        try:
            mask = inputs.get("attention_mask") if hasattr(inputs, "get") else None
            ids = inputs.get("input_ids") if hasattr(inputs, "get") else None
            if mask is not None:
                self._pending_tokens = self._pending_tokens + mask.sum()
            elif ids is not None:
                self._pending_tokens = self._pending_tokens + ids.numel()
        except Exception:  # an input shape we do not know: tokens/s stays unknown, training goes on
            log.debug("llamatelemetry could not count the tokens of a training batch", exc_info=True)

    def _drain_tokens(self) -> int:
        pending, self._pending_tokens = self._pending_tokens, 0
        value = _number(pending)
        counted = int(value) if value is not None else 0
        self.tokens += counted
        return counted

    def logged(self, state: Any, logs: dict[str, Any]) -> None:
        """A Trainer log: a training-step log becomes an event on the span and metric points."""
        self._safe(lambda: self._logged(state, logs), None)

    def _logged(self, state: Any, logs: dict[str, Any]) -> None:
        span = self.span
        if span is None or "loss" not in logs:
            return  # evaluation logs and the final summary are not training steps
        now = time.perf_counter()
        window = self._drain_tokens()
        step = int(getattr(state, "global_step", 0) or 0)
        attributes: dict[str, Any] = {names.STEP: step}
        for attribute, key in ((names.LOSS, "loss"), (names.LEARNING_RATE, "learning_rate"),
                               (names.GRAD_NORM, "grad_norm"), (names.EPOCH, "epoch")):
            value = _number(logs.get(key))
            if value is not None:
                attributes[attribute] = value
        seconds = now - self._last_log_s
        if window and seconds > 0:
            attributes[names.TOKENS_PER_SECOND] = window / seconds
        span.add_event(names.EVENT_LOG_STEP, attributes)
        metrics = instruments()
        labels = self._metric_attributes
        if step > self._last_step:
            metrics.steps.add(step - self._last_step, labels)
        if window:
            metrics.tokens.add(window, labels)
        for attribute, gauge in ((names.LOSS, metrics.loss), (names.LEARNING_RATE, metrics.learning_rate),
                                 (names.GRAD_NORM, metrics.grad_norm), (names.TOKENS_PER_SECOND, metrics.throughput)):
            if attribute in attributes:
                gauge.set(attributes[attribute], labels)
        self._last_step, self._last_log_s = step, now

    def finished(self, result: Any) -> None:
        """``train()`` returned ``result`` (a ``TrainOutput``): the run's totals go on the span."""
        self._safe(lambda: self._finished(result), None)

    def _finished(self, result: Any) -> None:
        span = self.span
        if span is None:
            return
        window = self._drain_tokens()
        labels = self._metric_attributes
        state = getattr(self.trainer, "state", None)
        step = int(getattr(result, "global_step", None) or getattr(state, "global_step", 0) or 0)
        if step > self._last_step:
            instruments().steps.add(step - self._last_step, labels)
            self._last_step = step
        if window:
            instruments().tokens.add(window, labels)
        attributes: dict[str, Any] = {names.STEP: step, names.TOKENS: self.tokens}
        loss = _number(getattr(result, "training_loss", None))
        if loss is not None:
            attributes[names.LOSS] = loss
        metrics = getattr(result, "metrics", None) or {}
        runtime = _number(metrics.get("train_runtime"))
        if runtime is not None:
            attributes[names.RUNTIME] = runtime
        span.set_attributes(attributes)

    @staticmethod
    def _safe(func: Any, default: Any) -> Any:
        try:
            return func()
        except Exception:
            log.warning("llamatelemetry: recording a training run failed; training goes on untraced there",
                        exc_info=True)
            return default
