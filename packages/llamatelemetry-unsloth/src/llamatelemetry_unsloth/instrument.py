"""Fine-tuning instrumentation: model load, LoRA attach, ``Trainer.train()``, merge and save, while telemetry runs.

``instrument_training()`` patches the classes every fine-tuning path goes through, so Unsloth's
``FastLanguageModel``, TRL's ``SFTTrainer`` and plain PEFT + transformers ``Trainer`` code are all
traced without changes:

- ``PreTrainedModel.from_pretrained`` (and Unsloth's ``FastLanguageModel.from_pretrained``): a
  ``llamatelemetry.train.model_load`` span with model, dtype, 4-bit, parameters, load time and peak memory;
- ``PeftModel.__init__`` (what ``get_peft_model`` and ``PeftModel.from_pretrained`` build): a
  ``llamatelemetry.train.adapter_attach`` span with rank, alpha, target modules and trainable parameters;
- ``Trainer.train`` (``SFTTrainer`` inherits it): a ``llamatelemetry.train`` span with an event per
  logging step (step, loss, learning rate, tokens/s, grad norm), through a ``TrainerCallback`` added
  for the call, and the ``llamatelemetry.train.*`` metrics;
- ``merge_and_unload`` and ``save_pretrained`` (model and adapter): ``llamatelemetry.train.merge`` and
  ``llamatelemetry.train.save`` spans.

Classes not imported yet are patched when they are (a post-import hook on ``sys.meta_path``), so
the order of ``import peft`` and ``llamatelemetry.init()`` does not matter. The plugin calls
``instrument_training()`` when telemetry starts and ``uninstrument_training()`` when it shuts
down; every patch passes straight through while telemetry is off, and a failure of the telemetry
itself is logged, never raised into training.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from llamatelemetry.inference.recording import telemetry_active
from llamatelemetry_unsloth import semconv as names

if TYPE_CHECKING:
    from types import ModuleType

    from opentelemetry.trace import Span

__all__ = ["instrument_training", "uninstrument_training", "is_instrumented", "memory_peak", "model_facts"]

log = logging.getLogger("llamatelemetry.unsloth")

# Set while a traced operation runs, so the calls it makes itself (Unsloth's loader calling
# from_pretrained, a PeftModel save calling the base save) do not open a second span.
_inside: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("llamatelemetry_unsloth_inside",
                                                                          default=frozenset())
_lock = threading.RLock()
_patches: list[_Patch] = []
_finder: _PostImportFinder | None = None


@attrs.frozen
class _Patch:
    """One attribute replaced on a class: what was there, and what we put."""

    owner: type
    name: str
    original: Any
    replacement: Any


# ------------------------------------------------------------------ public switch

def instrument_training() -> None:
    """Patch the fine-tuning classes (now, or when they are imported); doing it twice is harmless."""
    global _finder
    with _lock:
        if _finder is not None:
            return
        _finder = _PostImportFinder()
        sys.meta_path.insert(0, _finder)
        for module_name in _TARGETS:
            module = sys.modules.get(module_name)
            if module is not None:
                _patch_module(module_name, module)


def uninstrument_training() -> None:
    """Restore every patched attribute (where nobody replaced our patch since) and remove the import hook."""
    global _finder
    with _lock:
        if _finder is not None:
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(_finder)
            _finder = None
        while _patches:
            patch = _patches.pop()
            if patch.owner.__dict__.get(patch.name) is patch.replacement:
                setattr(patch.owner, patch.name, patch.original)


def is_instrumented() -> bool:
    """Whether ``instrument_training()`` is in effect."""
    return _finder is not None


# ------------------------------------------------------------------ post-import hook

class _Loader(importlib.abc.Loader):
    """Runs the real loader, then patches the freshly executed module."""

    def __init__(self, inner: importlib.abc.Loader, name: str) -> None:
        self._inner = inner
        self._name = name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        with _lock:
            if _finder is not None:
                _patch_module(self._name, module)

    def __getattr__(self, name: str) -> Any:
        # Resource readers, get_source, is_package...: whatever the real loader offers.
        return getattr(self._inner, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for the modules we patch, it wraps the real spec's loader."""

    def __init__(self) -> None:
        self._busy = threading.local()

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _TARGETS or getattr(self._busy, "name", None) == fullname:
            return None
        self._busy.name = fullname
        try:
            spec = importlib.util.find_spec(fullname)
        except (ImportError, ValueError):
            return None
        finally:
            self._busy.name = None
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _Loader(spec.loader, fullname)
        return spec


def _patch_module(module_name: str, module: ModuleType) -> None:
    try:
        _TARGETS[module_name](module)
    except Exception:  # a library version whose layout we do not know: train untraced rather than fail
        log.warning("llamatelemetry could not instrument %s; fine-tuning there is not traced", module_name,
                    exc_info=True)


def _replace(owner: type, name: str, make: Callable[[Any], Any]) -> None:
    """Replace ``owner.name`` (from its own ``__dict__``) with ``make(original)``, once."""
    original = owner.__dict__.get(name)
    if original is None or getattr(getattr(original, "__func__", original), "_llamatelemetry_patch", False):
        return
    replacement = make(original)
    with contextlib.suppress(AttributeError, TypeError):
        replacement._llamatelemetry_patch = True
    inner = getattr(replacement, "__func__", None)
    if inner is not None:
        inner._llamatelemetry_patch = True
    setattr(owner, name, replacement)
    _patches.append(_Patch(owner, name, original, replacement))


# ------------------------------------------------------------------ span helpers

@contextlib.contextmanager
def _traced(kind: str, span_name: str, attributes: dict[str, Any]) -> Iterator[Span | None]:
    """A span around one operation, or ``None`` when telemetry is off or one of ``kind`` is already open."""
    inside = _inside.get()
    if kind in inside or not telemetry_active():
        yield None
        return
    from opentelemetry import trace

    from llamatelemetry.decorators import record_error
    from llamatelemetry.otel import get_tracer

    token = _inside.set(inside | {kind})
    try:
        with get_tracer().start_as_current_span(span_name, kind=trace.SpanKind.INTERNAL, attributes=attributes,
                                                record_exception=False, set_status_on_exception=False) as span:
            try:
                yield span
            except BaseException as exc:
                record_error(span, exc)
                raise
    finally:
        _inside.reset(token)


def _guard(what: str, func: Callable[..., None], *args: Any) -> None:
    """Run a telemetry step; a failure is logged once per step kind, never raised into training."""
    try:
        func(*args)
    except Exception:
        if what not in _warned:
            _warned.add(what)
            log.warning("llamatelemetry: recording %s failed; training goes on untraced there", what, exc_info=True)


_warned: set[str] = set()


@attrs.frozen
class TrainInstruments:
    """The ``llamatelemetry.train.*`` instruments, made once per meter."""

    steps: Any
    tokens: Any
    loss: Any
    learning_rate: Any
    grad_norm: Any
    throughput: Any
    duration: Any
    load_duration: Any


def _create_instruments(meter: Any) -> TrainInstruments:
    from llamatelemetry.semconv.metrics import DURATION_BUCKETS

    # Training runs last seconds to days: the duration buckets, extended by doubling.
    buckets = [*DURATION_BUCKETS, *(DURATION_BUCKETS[-1] * 2**i for i in range(1, 12))]
    return TrainInstruments(
        steps=meter.create_counter(names.METRIC_STEPS, unit="{step}", description="Optimizer steps trained."),
        tokens=meter.create_counter(names.METRIC_TOKENS, unit="{token}",
                                    description="Input tokens trained on (padding left out where a mask says so)."),
        loss=meter.create_gauge(names.METRIC_LOSS, unit="1", description="Training loss at the last logging step."),
        learning_rate=meter.create_gauge(names.METRIC_LEARNING_RATE, unit="1",
                                         description="Learning rate at the last logging step."),
        grad_norm=meter.create_gauge(names.METRIC_GRAD_NORM, unit="1",
                                     description="Gradient norm at the last logging step."),
        throughput=meter.create_gauge(names.METRIC_THROUGHPUT, unit="{token}/s",
                                      description="Training tokens per second over the last logging window."),
        duration=meter.create_histogram(names.METRIC_DURATION, unit="s", description="Duration of one train() call.",
                                        explicit_bucket_boundaries_advisory=buckets),
        load_duration=meter.create_histogram(names.METRIC_MODEL_LOAD_DURATION, unit="s",
                                             description="Duration of one model load for fine-tuning.",
                                             explicit_bucket_boundaries_advisory=buckets),
    )


def instruments() -> TrainInstruments:
    """The instruments on the current meter."""
    from llamatelemetry.otel import cached_instruments

    return cached_instruments("llamatelemetry_unsloth.train", _create_instruments)


# ------------------------------------------------------------------ model facts

def _torch() -> Any | None:
    return sys.modules.get("torch")


def _cuda_in_use(torch: Any | None) -> bool:
    return torch is not None and bool(torch.cuda.is_available()) and bool(torch.cuda.is_initialized())


def _start_memory_window() -> None:
    torch = _torch()
    if _cuda_in_use(torch):
        assert torch is not None
        torch.cuda.reset_peak_memory_stats()


def memory_peak() -> tuple[int, str] | None:
    """Peak memory so far: CUDA bytes allocated (since the window began) or the process's peak RSS."""
    torch = _torch()
    if _cuda_in_use(torch):
        assert torch is not None
        return int(torch.cuda.max_memory_allocated()), "cuda_allocated"
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024), "process_rss"


def model_facts(model: Any) -> dict[str, Any]:
    """Span attributes describing a loaded model: display name, dtype, 4-bit, parameters, size in memory."""
    from llamatelemetry.semconv.mapping import model_display_name

    facts: dict[str, Any] = {}
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if isinstance(name, str) and name:
        facts[names.MODEL] = model_display_name(name)
    dtype = getattr(model, "dtype", None)
    if dtype is not None:
        facts[names.MODEL_DTYPE] = str(dtype).removeprefix("torch.")
    facts[names.MODEL_LOAD_IN_4BIT] = bool(getattr(model, "is_loaded_in_4bit", False))
    counter = getattr(model, "num_parameters", None)
    if callable(counter):
        facts[names.MODEL_PARAMETERS] = int(counter())
    footprint = getattr(model, "get_memory_footprint", None)
    if callable(footprint):
        facts[names.MODEL_SIZE] = int(footprint())
    return facts


def _wants_4bit(kwargs: dict[str, Any]) -> bool:
    if kwargs.get("load_in_4bit"):
        return True
    config = kwargs.get("quantization_config")
    return bool(getattr(config, "load_in_4bit", False) or (isinstance(config, dict) and config.get("load_in_4bit")))


def _source_name(args: tuple[Any, ...], kwargs: dict[str, Any], key: str) -> str | None:
    from llamatelemetry.semconv.mapping import model_display_name

    source = args[0] if args else kwargs.get(key)
    return model_display_name(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else None


@contextlib.contextmanager
def traced_model_load(loader: str, name: str | None, load_in_4bit: bool) -> Iterator[Callable[[Any], None]]:
    """A ``llamatelemetry.train.model_load`` span; call the yielded function with the loaded model."""
    attributes: dict[str, Any] = {names.LOADER: loader, names.MODEL_LOAD_IN_4BIT: load_in_4bit}
    if name:
        attributes[names.MODEL] = name
    started = time.perf_counter()
    with _traced("load", names.SPAN_MODEL_LOAD, attributes) as span:
        if span is not None:
            _guard("model load", _start_memory_window)

        def loaded(model: Any) -> None:
            if span is None or not span.is_recording():
                return
            elapsed = time.perf_counter() - started
            facts = model_facts(model)
            if load_in_4bit:  # the model's own flag misses Unsloth's 4-bit loads on CPU, which fall back
                facts[names.MODEL_LOAD_IN_4BIT] = True
            facts[names.MODEL_LOAD_DURATION] = elapsed
            peak = memory_peak()
            if peak is not None:
                facts[names.MEMORY_PEAK], facts[names.MEMORY_PEAK_KIND] = peak
            span.set_attributes(facts)
            instruments().load_duration.record(elapsed, {names.LOADER: loader})

        yield lambda model: _guard("model load", loaded, model)


# ------------------------------------------------------------------ transformers: load and save

def _patch_modeling_utils(module: ModuleType) -> None:
    base = module.PreTrainedModel

    def make_load(original: Any) -> Any:
        func = original.__func__

        @functools.wraps(func)
        def from_pretrained(cls: Any, *args: Any, **kwargs: Any) -> Any:
            if "load" in _inside.get() or not telemetry_active():
                return func(cls, *args, **kwargs)
            name = _source_name(args, kwargs, "pretrained_model_name_or_path")
            with traced_model_load("transformers", name, _wants_4bit(kwargs)) as loaded:
                model = func(cls, *args, **kwargs)
                loaded(model)
            return model

        return classmethod(from_pretrained)

    _replace(base, "from_pretrained", make_load)
    _replace(base, "save_pretrained", lambda original: _make_save(original, "model"))


def _folder_bytes(folder: Path, since: float) -> int:
    """Bytes of the files under ``folder`` written since ``since`` (a save may add to an existing folder)."""
    total = 0
    if folder.is_dir():
        for path in folder.rglob("*"):
            with contextlib.suppress(OSError):
                stat = path.stat()
                if path.is_file() and stat.st_mtime >= since - 1:
                    total += stat.st_size
    return total


def _make_save(original: Any, kind: str) -> Any:
    @functools.wraps(original)
    def save_pretrained(self: Any, save_directory: Any = None, *args: Any, **kwargs: Any) -> Any:
        if "save" in _inside.get() or not telemetry_active():
            return original(self, save_directory, *args, **kwargs)
        folder = Path(os.fspath(save_directory)) if isinstance(save_directory, (str, os.PathLike)) else None
        attributes: dict[str, Any] = {names.SAVE_KIND: kind}
        if folder is not None:
            attributes[names.SAVE_PATH] = str(folder.expanduser().resolve())
        started = time.time()
        with _traced("save", names.SPAN_SAVE, attributes) as span:
            result = original(self, save_directory, *args, **kwargs)
            if span is not None and folder is not None:
                _guard("save", lambda: span.set_attribute(names.SAVE_SIZE, _folder_bytes(folder, started)))
        return result

    return save_pretrained


# ------------------------------------------------------------------ peft: attach, merge, adapter save

def adapter_facts(peft_model: Any, adapter_name: str | None = None) -> dict[str, Any]:
    """Span attributes of a PEFT model's adapter: type, rank, alpha, dropout, target modules, trainable parameters."""
    facts: dict[str, Any] = {}
    configs = getattr(peft_model, "peft_config", None) or {}
    name = adapter_name or getattr(peft_model, "active_adapter", None) or "default"
    if not isinstance(name, str):
        name = str(next(iter(name), "default"))
    config = configs.get(name) if isinstance(configs, dict) else None
    facts[names.ADAPTER_NAME] = name
    if config is not None:
        peft_type = getattr(config, "peft_type", None)
        if peft_type is not None:
            facts[names.ADAPTER_TYPE] = str(getattr(peft_type, "value", peft_type))
        for attribute, key, cast in ((names.LORA_RANK, "r", int), (names.LORA_ALPHA, "lora_alpha", float),
                                     (names.LORA_DROPOUT, "lora_dropout", float)):
            value = getattr(config, key, None)
            if isinstance(value, (int, float)):
                facts[attribute] = cast(value)
        targets = getattr(config, "target_modules", None)
        if isinstance(targets, str):
            facts[names.LORA_TARGET_MODULES] = [targets]
        elif targets:
            facts[names.LORA_TARGET_MODULES] = sorted(str(t) for t in targets)
    counter = getattr(peft_model, "get_nb_trainable_parameters", None)
    if callable(counter):
        trainable, total = counter()
        facts[names.TRAINABLE_PARAMETERS] = int(trainable)
        facts[names.TOTAL_PARAMETERS] = int(total)
    return facts


def _patch_peft_model(module: ModuleType) -> None:
    peft_model = module.PeftModel

    def make_init(original: Any) -> Any:
        @functools.wraps(original)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            if "attach" in _inside.get() or not telemetry_active():
                original(self, *args, **kwargs)
                return
            adapter = args[2] if len(args) > 2 else kwargs.get("adapter_name", "default")
            with _traced("attach", names.SPAN_ADAPTER_ATTACH, {}) as span:
                original(self, *args, **kwargs)
                if span is not None and span.is_recording():
                    _guard("adapter attach", lambda: span.set_attributes(adapter_facts(self, adapter)))

        return __init__

    _replace(peft_model, "__init__", make_init)
    _replace(peft_model, "save_pretrained", lambda original: _make_save(original, "adapter"))


def lora_layer_count(model: Any) -> int:
    """LoRA layers in ``model`` (modules carrying ``lora_A`` weights)."""
    modules = getattr(model, "modules", None)
    if not callable(modules):
        return 0
    return sum(1 for module in modules() if hasattr(module, "lora_A") and len(getattr(module, "lora_A", ())) > 0)


def _patch_tuners(module: ModuleType) -> None:
    def make_merge(original: Any) -> Any:
        @functools.wraps(original)
        def merge_and_unload(self: Any, *args: Any, **kwargs: Any) -> Any:
            if "merge" in _inside.get() or not telemetry_active():
                return original(self, *args, **kwargs)
            attributes = {names.MERGE_METHOD: "merged_16bit", names.MERGED_MODULES: lora_layer_count(self)}
            with _traced("merge", names.SPAN_MERGE, attributes) as span:
                merged = original(self, *args, **kwargs)
                if span is not None and span.is_recording():
                    _guard("merge", lambda: span.set_attributes(
                        {k: v for k, v in model_facts(merged).items()
                         if k in (names.MODEL, names.MODEL_DTYPE, names.MODEL_PARAMETERS)}))
            return merged

        return merge_and_unload

    _replace(module.BaseTuner, "merge_and_unload", make_merge)


# ------------------------------------------------------------------ transformers Trainer

def _patch_trainer(module: ModuleType) -> None:
    def make_train(original: Any) -> Any:
        @functools.wraps(original)
        def train(self: Any, *args: Any, **kwargs: Any) -> Any:
            if "train" in _inside.get() or not telemetry_active():
                return original(self, *args, **kwargs)
            from llamatelemetry_unsloth.training import TrainRun

            with TrainRun(self) as run:
                result = original(self, *args, **kwargs)
                run.finished(result)
            return result

        return train

    _replace(module.Trainer, "train", make_train)


@contextlib.contextmanager
def traced_train(attributes: dict[str, Any]) -> Iterator[Span | None]:
    """The ``llamatelemetry.train`` span (``None`` when telemetry is off or a train span is already open)."""
    with _traced("train", names.SPAN_TRAIN, attributes) as span:
        yield span


@contextlib.contextmanager
def traced_merge(attributes: dict[str, Any]) -> Iterator[Span | None]:
    """A ``llamatelemetry.train.merge`` span around a merge this plugin runs itself; merges inside it open none."""
    with _traced("merge", names.SPAN_MERGE, attributes) as span:
        yield span


# ------------------------------------------------------------------ Unsloth

#: FastLanguageModel.from_pretrained's own default (4-bit QLoRA), for a wrapper whose signature hides it.
_UNSLOTH_LOAD_IN_4BIT_DEFAULT: Final = True


def _effective_4bit(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """``load_in_4bit`` as the call gets it: passed (by name or position), or the signature's default."""
    if "load_in_4bit" in kwargs:
        return bool(kwargs["load_in_4bit"])
    try:
        bound = inspect.signature(func).bind_partial(*args, **kwargs)
    except (TypeError, ValueError):  # no signature to read, or a call it does not take: the caller's error
        return _UNSLOTH_LOAD_IN_4BIT_DEFAULT
    if "load_in_4bit" in bound.arguments:
        return bool(bound.arguments["load_in_4bit"])
    parameter = bound.signature.parameters.get("load_in_4bit")
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return _UNSLOTH_LOAD_IN_4BIT_DEFAULT
    return bool(parameter.default)


def _patch_unsloth(module: ModuleType) -> None:
    fast = getattr(module, "FastLanguageModel", None)
    if fast is None:
        return

    def make_load(original: Any) -> Any:
        func = original.__func__ if isinstance(original, (staticmethod, classmethod)) else original
        bound_to_class = isinstance(original, classmethod)

        @functools.wraps(func)
        def from_pretrained(*args: Any, **kwargs: Any) -> Any:
            call_args = args[1:] if bound_to_class else args
            if "load" in _inside.get() or not telemetry_active():
                return func(*args, **kwargs)
            name = _source_name(call_args, kwargs, "model_name")
            with traced_model_load("unsloth", name, _effective_4bit(func, args, kwargs)) as loaded:
                result = func(*args, **kwargs)
                model = result[0] if isinstance(result, tuple) else result
                loaded(model)
            return result

        return classmethod(from_pretrained) if bound_to_class else staticmethod(from_pretrained)

    for owner in type.mro(fast):
        if "from_pretrained" in owner.__dict__:
            _replace(owner, "from_pretrained", make_load)
            break


_TARGETS: Final[dict[str, Callable[[ModuleType], None]]] = {
    "transformers.modeling_utils": _patch_modeling_utils,
    "transformers.trainer": _patch_trainer,
    "peft.peft_model": _patch_peft_model,
    "peft.tuners.tuners_utils": _patch_tuners,
    "unsloth": _patch_unsloth,
}
