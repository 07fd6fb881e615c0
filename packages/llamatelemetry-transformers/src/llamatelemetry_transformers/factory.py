"""The ``transformers`` backend of ``create_engine``: a model folder, or model and tokenizer objects."""

from __future__ import annotations

import os
from typing import Any

from llamatelemetry.inference.types import CudaInferenceConfig


def create_backend(
    llama_server_url: str | None = None,
    config: CudaInferenceConfig | None = None,
    *,
    model_path: str | os.PathLike[str] | None = None,
    model: Any = None,
    tokenizer: Any = None,
    **options: Any,
) -> Any:
    """``model_path=`` loads a folder written by ``save_pretrained``; ``model=``/``tokenizer=`` adopt your objects."""
    if llama_server_url is not None:
        raise ValueError("create_engine('transformers') runs the model in this process: pass model_path= (a folder "
                         "written by save_pretrained) or model= and tokenizer=. llama_server_url= is for "
                         "create_engine('llama.cpp', ...).")
    if model_path is None and model is None:
        raise ValueError("create_engine('transformers') needs model_path='models/my-model' (a folder written by "
                         "save_pretrained) or model= and tokenizer= (objects you already loaded).")
    from llamatelemetry_transformers.backend import TransformersBackend

    return TransformersBackend(model_path, config, model=model, tokenizer=tokenizer, **options)
