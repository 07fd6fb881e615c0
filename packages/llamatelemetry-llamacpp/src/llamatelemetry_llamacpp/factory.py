"""The ``llama.cpp`` backend of ``create_engine``: a running server, or a model in this process."""

from __future__ import annotations

import os
from typing import Any

from llamatelemetry.inference.types import CudaInferenceConfig


def create_backend(
    llama_server_url: str | None = None,
    config: CudaInferenceConfig | None = None,
    *,
    model_path: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Any:
    """``llama_server_url=`` gives the server backend (CLIENT spans), ``model_path=`` the in-process one."""
    if llama_server_url and model_path:
        raise ValueError("create_engine('llama.cpp') takes llama_server_url= (a running server) or model_path= "
                         "(load the model in this process), not both.")
    if llama_server_url:
        from llamatelemetry_llamacpp.server_backend import LlamaCppServerBackend

        return LlamaCppServerBackend(llama_server_url, config=config, **options)
    if model_path:
        from llamatelemetry_llamacpp.backend import LlamaCppBackend

        return LlamaCppBackend(model_path, config=config, **options)
    raise ValueError("create_engine('llama.cpp') needs llama_server_url='http://127.0.0.1:8090' (a running "
                     "llama.cpp server) or model_path='model.gguf' (the model loaded in this process).")
