"""Fuzzing the GGUF header reader: ``check_gguf_file`` accepts a file or raises one of its three errors.

Documented: ``ModelFileNotFoundError`` (no such file), ``NotAGGUFError`` (not GGUF, an unsupported
version, or a damaged header) and ``TruncatedModelError`` (the file ends before what its header
lists); all are ``llamatelemetry.errors.ModelLoadError``. Nothing else may escape, whatever the bytes.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzzing import TEST_TIMEOUT_S, examples, mutated
from hypothesis import given, settings
from hypothesis import strategies as st

from llamatelemetry.errors import ModelLoadError
from llamatelemetry_llamacpp.backend_errors import NotAGGUFError, TruncatedModelError
from llamatelemetry_llamacpp.gguf_file import GGUFFileInfo, check_gguf_file

gguf = pytest.importorskip("gguf", reason="pip install gguf numpy")
np = pytest.importorskip("numpy")

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)

_SCRATCH = Path(tempfile.mkdtemp(prefix="llamatelemetry-fuzz-gguf-")) / "model.gguf"


def _check(content: bytes) -> GGUFFileInfo | None:
    """``check_gguf_file`` on ``content`` written to a file: its answer, or None for a documented error."""
    _SCRATCH.write_bytes(content)
    try:
        info = check_gguf_file(_SCRATCH)
    except (NotAGGUFError, TruncatedModelError) as exc:
        assert isinstance(exc, ModelLoadError) and str(exc)
        return None
    assert info.file_size == len(content) and info.needed_size <= len(content)
    return info


def _small_gguf() -> bytes:
    """A GGUF written by the real ``gguf`` writer: every metadata type, arrays, three tensors of two types."""
    path = _SCRATCH.with_name("small.gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint8("t.u8", 7)
    writer.add_int16("t.i16", -3)
    writer.add_float32("t.f32", 1.5)
    writer.add_uint64("t.u64", 2**40)
    writer.add_bool("t.bool", True)
    writer.add_string("t.str", "héllo")
    writer.add_array("t.ints", [1, 2, 3])
    writer.add_array("t.strs", ["a", "bc", ""])
    writer.add_tensor("a", np.arange(32, dtype=np.float32))
    writer.add_tensor("b", np.ones((4, 8), dtype=np.float16))
    writer.add_tensor("c", np.zeros(3, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


SMALL = _small_gguf()


@pytest.fixture(scope="module")
def tiny_header(tiny_gguf: Path) -> Iterator[bytes]:
    """The first 16 KB of the tiny llama GGUF the suite runs llama.cpp on (its whole metadata: vocab, ...)."""
    yield tiny_gguf.read_bytes()[:16384]


def test_real_files_pass(tiny_gguf: Path) -> None:
    info = _check(SMALL)
    assert info is not None and info.n_tensors == 3 and info.n_metadata >= 8
    assert check_gguf_file(tiny_gguf).n_tensors > 10


@settings(max_examples=examples(1000))
@given(body=st.binary(max_size=256))
def test_arbitrary_bytes(body: bytes) -> None:
    _check(body)


@settings(max_examples=examples(800))
@given(body=st.binary(max_size=256))
def test_arbitrary_bytes_after_a_valid_preamble(body: bytes) -> None:
    """Past the magic and version, so the fuzzer reaches the metadata and tensor-table reader."""
    _check(b"GGUF" + struct.pack("<I", 3) + body)


@settings(max_examples=examples(600))
@given(body=mutated(SMALL))
def test_mutated_small_gguf(body: bytes) -> None:
    _check(body)


@settings(max_examples=examples(300))
@given(data=st.data())
def test_mutated_tiny_llama_header(tiny_header: bytes, data: st.DataObject) -> None:
    _check(data.draw(mutated(tiny_header, max_edits=4)))


def test_nested_arrays_deeper_than_python_recursion() -> None:
    """An array of arrays of arrays...: a damaged header, not a RecursionError."""
    depth = 5000
    kv = struct.pack("<Q", 1) + b"k" + struct.pack("<I", 9) + (struct.pack("<IQ", 9, 1) * depth)
    kv += struct.pack("<IQ", 4, 0)
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv
    with pytest.raises(NotAGGUFError, match="nested"):
        check_gguf_file(_write(header))


def test_an_unsupported_version_is_named() -> None:
    """The version's own message, not wrapped in the damaged-header one."""
    with pytest.raises(NotAGGUFError, match="GGUF version is 7") as info:
        check_gguf_file(_write(b"GGUF" + struct.pack("<IQQ", 7, 0, 0)))
    assert "damaged" not in str(info.value)
    with pytest.raises(NotAGGUFError, match="big-endian") as info:
        check_gguf_file(_write(b"GGUF" + struct.pack(">IQQ", 3, 0, 0)))
    assert "damaged" not in str(info.value)


def _write(content: bytes) -> Path:
    _SCRATCH.write_bytes(content)
    return _SCRATCH
