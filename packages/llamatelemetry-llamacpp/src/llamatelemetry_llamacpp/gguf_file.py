"""The GGUF file, checked before llama.cpp sees it: exists, GGUF magic and version, header and tensor data complete.

Only the header is read (through ``mmap``), so a multi-gigabyte model is checked in milliseconds,
and a wrong or truncated file gets a specific error instead of llama.cpp's generic load failure.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Mapping
from typing import Final

import attrs

from llamatelemetry_llamacpp.backend_errors import ModelFileNotFoundError, NotAGGUFError, TruncatedModelError

__all__ = ["GGUFFileInfo", "check_gguf_file", "GGML_TYPE_SIZES"]

_GGUF_MAGIC: Final = b"GGUF"
_DEFAULT_ALIGNMENT: Final = 32
# GGUF metadata value types -> byte size (string = 8, array = 9 are variable).
_SCALAR_SIZES: Final[Mapping[int, int]] = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
# Real files nest arrays one level at most; deeper is a damaged (or hostile) header.
_MAX_ARRAY_DEPTH: Final = 16
# ggml tensor type -> (elements per block, bytes per block), as gguf.GGML_QUANT_SIZES. Only stable
# layouts are listed; a tensor of a type not here is not size-checked (llama.cpp checks it on load).
GGML_TYPE_SIZES: Final[Mapping[int, tuple[int, int]]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
    22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17),
}  # fmt: skip


@attrs.frozen
class GGUFFileInfo:
    """What the header of a complete GGUF file says about it."""

    path: str
    file_size: int
    version: int
    n_tensors: int
    n_metadata: int
    #: Bytes the header's tensor table needs (data offset + the end of the last tensor whose type is known).
    needed_size: int


class _ShortRead(Exception):
    """The header runs past the end of the file."""


class _HeaderReader:
    """Little-endian reads over the mapped file, each bounds-checked."""

    def __init__(self, data: mmap.mmap | bytes, size: int) -> None:
        self.data = data
        self.size = size
        self.pos = 0

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > self.size:
            raise _ShortRead
        self.pos = start + n
        return start

    def u32(self) -> int:
        value: int = struct.unpack_from("<I", self.data, self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack_from("<Q", self.data, self.take(8))[0]
        return value

    def string(self) -> bytes:
        length = self.u64()
        start = self.take(length)
        return bytes(self.data[start:start + length])

    def skip_value(self, kind: int, depth: int = 0) -> None:
        if kind in _SCALAR_SIZES:
            self.take(_SCALAR_SIZES[kind])
        elif kind == _STRING:
            self.take(self.u64())
        elif kind == _ARRAY:
            item_kind, count = self.u32(), self.u64()
            if item_kind in _SCALAR_SIZES:
                self.take(_SCALAR_SIZES[item_kind] * count)
            else:
                if count > self.size - self.pos:  # every item takes at least one byte
                    raise _ShortRead
                if depth >= _MAX_ARRAY_DEPTH:  # a crafted header would otherwise exhaust Python's recursion
                    raise ValueError(f"metadata arrays nested more than {_MAX_ARRAY_DEPTH} deep")
                for _ in range(count):
                    self.skip_value(item_kind, depth + 1)
        else:
            raise ValueError(f"unknown metadata value type {kind}")


def check_gguf_file(path: str | os.PathLike[str]) -> GGUFFileInfo:
    """Check that ``path`` is a complete GGUF file, reading only its header; raise a specific error if not.

    Raises ``ModelFileNotFoundError`` (no such file), ``NotAGGUFError`` (not GGUF, a version other
    than 2 or 3, or a damaged header) or ``TruncatedModelError`` (the file ends before what its header
    lists); whatever the bytes, nothing else (fuzzed in tests/fuzz/test_fuzz_gguf.py).
    """
    text = os.fspath(path)
    if not os.path.isfile(text):
        raise ModelFileNotFoundError(text)
    with open(text, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise NotAGGUFError(text, b"", "the file is empty (0 bytes)")
        head = handle.read(4)
        if head != _GGUF_MAGIC:
            if len(head) < 4 and _GGUF_MAGIC.startswith(head):
                raise TruncatedModelError(text, size, None, "it ends inside the GGUF magic")
            raise NotAGGUFError(text, head)
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse_header(text, data, size)


def _parse_header(path: str, data: mmap.mmap, size: int) -> GGUFFileInfo:
    reader = _HeaderReader(data, size)
    reader.take(4)
    where = "it ends inside the GGUF header"
    try:
        version = reader.u32()
        if version not in (2, 3):
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            reason = (f"it is a big-endian GGUF (version {swapped}), which this machine's llama.cpp cannot load"
                      if swapped in (2, 3) else f"its GGUF version is {version}; llama.cpp loads versions 2 and 3")
            raise NotAGGUFError(path, bytes(data[:8]), reason)
        n_tensors, n_kv = reader.u64(), reader.u64()
        alignment = _DEFAULT_ALIGNMENT
        where = "it ends inside the GGUF metadata"
        for _ in range(n_kv):
            key = reader.string()
            kind = reader.u32()
            if key == b"general.alignment" and kind == _UINT32:
                alignment = reader.u32() or _DEFAULT_ALIGNMENT
            else:
                reader.skip_value(kind)
        where = "it ends inside the GGUF tensor table"
        if n_tensors > size - reader.pos:
            raise _ShortRead
        data_end = 0
        for _ in range(n_tensors):
            reader.take(reader.u64())  # the tensor's name
            n_dims = reader.u32()
            elements = 1
            for _ in range(n_dims):
                elements *= reader.u64()
            tensor_type, offset = reader.u32(), reader.u64()
            block = GGML_TYPE_SIZES.get(tensor_type)
            if block is not None and elements % block[0] == 0:
                data_end = max(data_end, offset + elements // block[0] * block[1])
    except _ShortRead:
        raise TruncatedModelError(path, size, None, where) from None
    except NotAGGUFError:
        raise
    except ValueError as exc:  # an unknown metadata type: a damaged header, or a newer format
        raise NotAGGUFError(path, bytes(data[:8]), f"its header is damaged or newer than this check ({exc})") from None
    data_start = -(-reader.pos // alignment) * alignment
    needed = data_start + data_end if n_tensors else reader.pos
    if size < needed:
        raise TruncatedModelError(path, size, needed, "the tensor data stops short of what the header lists")
    return GGUFFileInfo(path=path, file_size=size, version=version, n_tensors=n_tensors, n_metadata=n_kv,
                        needed_size=needed)

