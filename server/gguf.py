"""A GGUF file's header read without llama.cpp: metadata, tensor table, and where the data ends.

Malformed GGUF files have crashed llama.cpp's loader (several CVEs in 2025-2026), and a file cut
short by a failed download or a full disk is only noticed by llama.cpp when it reads past the
end. Reading the header here first lets gemma-serve refuse such a file with one line, even when
the registry records no size or hash for it: every tensor's extent is computed from its shape and
type and compared with the file's size.

The parser trusts nothing it reads: every length and count is checked against the bytes left
before anything is allocated, so a hostile header cannot make it loop or allocate without bound.
Layout (GGUF v2 and v3): magic, version (u32), tensor count (u64), metadata count (u64), the
metadata key/values, the tensor infos, padding to `general.alignment`, then the tensor data.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4  # GGML_MAX_DIMS

# Scalar value types: GGUF type id -> struct format (little-endian).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?"}
_SCALARS |= {10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

# ggml tensor types: id -> (elements per block, bytes per block), as ggml's type traits say.
# A type missing here (one newer than this table) is checked by its offset only.
GGML_BLOCKS: dict[int, tuple[int, int]] = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 36),  # Q8_1
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
    39: (32, 17),  # MXFP4
    40: (64, 36),  # NVFP4
    41: (128, 18),  # Q1_0
}


class GGUFError(ValueError):
    """The file is not a well-formed, complete GGUF file; the message says what is wrong."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the data section


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    metadata: dict[str, object]  # scalars and strings; arrays as their length only
    tensors: tuple[TensorInfo, ...]
    data_start: int  # file offset of the tensor data
    data_end: int  # file offset just past the last byte any tensor needs
    file_size: int


def tensor_nbytes(shape: tuple[int, ...], ggml_type: int) -> int | None:
    """Bytes a tensor of this shape and type takes, or None for a type not in GGML_BLOCKS."""
    if ggml_type not in GGML_BLOCKS:
        return None
    block, size = GGML_BLOCKS[ggml_type]
    rows = 1
    for dim in shape[1:]:
        rows *= dim
    return -(-shape[0] // block) * size * rows if shape else size


class _Reader:
    def __init__(self, data: mmap.mmap | bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, count: int, what: str) -> int:
        """Reserve `count` bytes, returning where they start; refuse a read past the end."""
        if count < 0 or self.pos + count > len(self.data):
            raise GGUFError(f"the header ends early (reading {what} at byte {self.pos})")
        start = self.pos
        self.pos += count
        return start

    def scalar(self, fmt: str, what: str) -> int | float | bool:
        start = self.take(struct.calcsize(fmt), what)
        value: int | float | bool = struct.unpack_from(fmt, self.data, start)[0]
        return value

    def u32(self, what: str) -> int:
        return int(self.scalar("<I", what))

    def u64(self, what: str) -> int:
        return int(self.scalar("<Q", what))

    def string(self, what: str) -> str:
        length = self.u64(what)
        start = self.take(length, what)
        try:
            return bytes(self.data[start : start + length]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GGUFError(f"{what} at byte {start} is not UTF-8") from exc

    def skip_string(self, what: str) -> None:
        self.take(self.u64(what), what)

    def value(self, kind: int, key: str) -> object:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind], f"the value of {key}")
        if kind == _STRING:
            return self.string(f"the value of {key}")
        if kind == _ARRAY:
            item_kind, count = self.u32(f"{key}'s item type"), self.u64(f"{key}'s length")
            if item_kind in _SCALARS:
                self.take(count * struct.calcsize(_SCALARS[item_kind]), f"the items of {key}")
            elif item_kind == _STRING:
                # Each string needs at least its 8-byte length: refuse absurd counts up front.
                if count * 8 > len(self.data) - self.pos:
                    raise GGUFError(f"{key} claims {count} strings, more than the file holds")
                for _ in range(count):
                    self.skip_string(f"an item of {key}")
            else:
                raise GGUFError(f"{key} is an array of an unsupported type {item_kind}")
            return count
        raise GGUFError(f"metadata {key} has an unknown type {kind}")


def parse_header(data: mmap.mmap | bytes) -> GGUFHeader:
    """Parse and check a whole GGUF file held in `data`. Raises GGUFError."""
    reader = _Reader(data)
    magic = bytes(data[:4])
    if magic != GGUF_MAGIC:
        raise GGUFError(f"it starts with {magic!r}, not GGUF")
    reader.take(4, "the magic")
    version = reader.u32("the version")
    if version not in (2, 3):
        raise GGUFError(f"GGUF version {version} is not supported (2 or 3)")
    tensor_count, kv_count = reader.u64("the tensor count"), reader.u64("the metadata count")
    # A key/value takes at least 12 bytes and a tensor info at least 24: refuse absurd counts.
    if kv_count * 12 + tensor_count * 24 > len(data):
        raise GGUFError(f"the header claims {kv_count} metadata entries and {tensor_count} tensors")
    metadata: dict[str, object] = {}
    for _ in range(kv_count):
        key = reader.string("a metadata key")
        metadata[key] = reader.value(reader.u32(f"{key}'s type"), key)
    tensors = []
    for _ in range(tensor_count):
        name = reader.string("a tensor name")
        n_dims = reader.u32(f"{name}'s dimension count")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise GGUFError(f"tensor {name} has {n_dims} dimensions")
        shape = tuple(reader.u64(f"{name}'s shape") for _ in range(n_dims))
        ggml_type, offset = reader.u32(f"{name}'s type"), reader.u64(f"{name}'s offset")
        tensors.append(TensorInfo(name, shape, ggml_type, offset))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFError(f"general.alignment {alignment!r} is not a power of two")
    data_start = -(-reader.pos // alignment) * alignment
    data_end = data_start
    for tensor in tensors:
        nbytes = tensor_nbytes(tensor.shape, tensor.ggml_type)
        data_end = max(data_end, data_start + tensor.offset + (nbytes or 1))
    return GGUFHeader(version, metadata, tuple(tensors), data_start, data_end, len(data))


def read_header(path: Path) -> GGUFHeader:
    """Parse the GGUF file at `path` and check that it holds every byte its tensors need.

    Raises GGUFError (malformed, or truncated: the message gives both sizes) or OSError.
    """
    with path.open("rb") as file:
        if path.stat().st_size == 0:
            raise GGUFError("the file is empty")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            header = parse_header(data)
    if header.data_end > header.file_size:
        raise GGUFError(
            f"the file is truncated: its tensors need {header.data_end} bytes but it has "
            f"{header.file_size}"
        )
    return header
