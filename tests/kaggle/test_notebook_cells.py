"""The cell sequence of docs/kaggle.md, run as written (on a FAKE Kaggle without GPU: the CPU preset, a tiny model)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from kaggle_fakes import FakeKaggleSecrets

import llamatelemetry
from llamatelemetry.testing.fake_nvml import FakeNVML


def test_the_documented_notebook_cells_run(on_kaggle: None, kaggle_root: Path, fake_kaggle_secrets: FakeKaggleSecrets,
                                           install_gpus: Callable[[str], FakeNVML], open_port: tuple[str, int],
                                           tiny_gguf: Path) -> None:
    pytest.importorskip("xllamacpp", reason='pip install "llamatelemetry-llamacpp[server]"')
    install_gpus("none")
    fake_kaggle_secrets.set({})  # no secret attached: the documented fallback to /kaggle/working

    # 2. Configure and start telemetry
    from llamatelemetry.kaggle import auto_configure

    cfg = auto_configure(init=True, protocol="http/protobuf", root=kaggle_root, internet_probe=open_port)
    assert cfg.initialized and cfg.preset == "cpu" and "telemetry    file" in cfg.describe()

    # 3. Start a llama.cpp server (threads/ctx/port: this 2-core test machine)
    from llamatelemetry.llama import quick_start

    server = quick_start(tiny_gguf, preset=cfg.preset, library_path=cfg.library_path, port=None, threads=1,
                         ctx_size=256)
    try:
        # 4. Chat
        from llamatelemetry.llama import LlamaCppClient

        client = LlamaCppClient(server.base_url)
        resp = client.chat.create(messages=[{"role": "user", "content": "Say hello in five words."}], max_tokens=4)
        assert isinstance(resp.choices[0].message["content"], str)
        client.close()

        # 5. Benchmark
        from llamatelemetry.bench import BenchmarkRunner

        report = BenchmarkRunner(backend="llama.cpp").run(llama_server_url=server.base_url, n_tokens=4,
                                                          concurrency=[1], num_requests=2, warmup=0)
        report.save(kaggle_root / "kaggle" / "working" / "bench.json")
    finally:
        server.stop_server()
        llamatelemetry.shutdown()

    assert json.loads((kaggle_root / "kaggle" / "working" / "bench.json").read_text())
    assert cfg.telemetry is not None and cfg.telemetry.output_file is not None
    exported = Path(cfg.telemetry.output_file).read_text()
    assert "llamatelemetry.kaggle.accelerator" in exported and '"chat ' in exported, "the chat span is in the file"
