"""Writing a GGUF that keeps some of a model's blocks: a draft cut from the target itself.

Token embedding, output norm and output head are kept; the kept blocks are renumbered
0..n-1, `<arch>.block_count` is set to n, and a metadata array with one entry per block
keeps the kept blocks' entries. Tensors are copied byte for byte (a small reader of the
header below; the data is never parsed), so the cut model's vocabulary and weights are the target's.

A block's behaviour can depend on its index, and llama.cpp derives that from the index
alone: Gemma 3 makes every 6th block (5, 11, ...) a global-attention block with its own
RoPE base and the others sliding-window ones, Gemma 2 alternates. A cut is only written
where every kept block lands on an index of its own kind; an architecture whose
index-dependent rules spec does not know is refused.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecError

# Architectures whose blocks are the same at every index.
UNIFORM = frozenset(
    {"llama", "qwen2", "qwen3", "mistral", "gemma", "phi3", "granite", "internlm2", "olmo", "olmo2", "starcoder2", "stablelm"}
)
# Architectures that alternate kinds of attention block by index: block i is global-attention
# where (i + 1) % period == 0, sliding-window otherwise (llama.cpp's set_swa_pattern).
GLOBAL_EVERY = {"gemma2": 2, "gemma3": 6}
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")


def block_kind(arch: str, i: int) -> str:
    """'global' or 'sliding' for an alternating architecture, 'block' for a uniform one."""
    period = GLOBAL_EVERY.get(arch)
    if period is None:
        return "block"
    return "global" if (i + 1) % period == 0 else "sliding"


def check_cut(arch: str, n_blocks: int, keep: Sequence[int]) -> None:
    """Refuse, in one line, a cut that llama.cpp would not run as the kept blocks ran in the target."""
    if arch not in UNIFORM and arch not in GLOBAL_EVERY:
        raise SpecError(
            f"spec cannot cut blocks out of a {arch!r} model: its blocks may depend on their index in ways spec "
            "does not know; use --drafter model with a draft model, or --drafter ngram"
        )
    if not keep:
        raise SpecError("a cut model needs at least one block")
    if list(keep) != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= n_blocks:
        raise SpecError(f"blocks to keep must be distinct, in order, from 0 to {n_blocks - 1}; got {list(keep)}")
    for new, old in enumerate(keep):
        if block_kind(arch, new) != block_kind(arch, old):
            raise SpecError(
                f"a {arch} model cannot keep blocks {format_blocks(keep)}: block {old} is {block_kind(arch, old)}-attention "
                f"but would become block {new}, which llama.cpp runs as {block_kind(arch, new)}-attention"
            )


def valid_cut(arch: str, keep: Sequence[int]) -> bool:
    return all(block_kind(arch, new) == block_kind(arch, old) for new, old in enumerate(keep))


def read_layout(path: Path) -> tuple[str, int]:
    """(architecture, block count) of a GGUF file."""
    g = read_gguf(path)
    return g.arch, g.n_blocks


def kept_blocks(path: Path) -> list[int] | None:
    """The target blocks a cut file holds, as written in its metadata (None: not a cut)."""
    return read_gguf(path).values.get(KEPT_KEY)


KEPT_KEY = "spec.kept_blocks"


def write_cut(src: Path, dst: Path, keep: Sequence[int]) -> None:
    """Write `src` with only the blocks `keep` (target indices) to `dst`, through a temporary file and a rename."""
    g = read_gguf(src)
    keep = list(keep)
    check_cut(g.arch, g.n_blocks, keep)
    renumber = {old: new for new, old in enumerate(keep)}
    kv = []
    for key, (vtype, raw) in g.raw.items():
        if key == KEPT_KEY:
            continue
        value = g.values.get(key)
        if key == f"{g.arch}.block_count":
            raw = _encode_scalar(vtype, len(keep))
        elif key.startswith(f"{g.arch}.") and vtype == _ARRAY and isinstance(value, list) and len(value) == g.n_blocks:
            # one entry per block (per-layer head counts, ...)
            raw = _encode_array(raw, [value[i] for i in keep])
        kv.append(_encode_str(key) + struct.pack("<I", vtype) + raw)
    kv.append(
        _encode_str(KEPT_KEY)
        + struct.pack("<I", _ARRAY)
        + struct.pack("<IQ", 4, len(keep))
        + struct.pack(f"<{len(keep)}I", *keep)
    )
    tensors = []  # (new name, info with dims and type, source offset, size)
    for t in g.tensors:
        m = _BLOCK.match(t.name)
        if m is None:
            tensors.append((t.name, t))
        elif int(m[1]) in renumber:
            tensors.append((f"blk.{renumber[int(m[1])]}.{m[2]}", t))
    infos, offset = [], 0
    for name, t in tensors:
        infos.append(_encode_str(name) + t.shape_and_type + struct.pack("<Q", offset))
        offset = _align(offset + t.size, g.alignment)
    head = g.magic_version + struct.pack("<QQ", len(tensors), len(kv)) + b"".join(kv) + b"".join(infos)
    head += bytes(_align(len(head), g.alignment) - len(head))
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as out:
            out.write(head)
            for _, t in tensors:
                fin.seek(g.data_start + t.offset)
                _copy(fin, out, t.size)
                out.write(bytes(_align(out.tell(), g.alignment) - out.tell()))
        os.replace(tmp, dst)
    except OSError as e:
        raise SpecError(
            f"could not write the cut model {dst.name} into {dst.parent}: {e.strerror or e}; "
            "free some space or set SPEC_CACHE to a folder you can write to"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


# --- a small GGUF reader: the header only; tensor data is copied, never parsed ---

_ARRAY, _STRING = 9, 8
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


@dataclass
class TensorInfo:
    name: str
    shape_and_type: bytes  # n_dims, dims and ggml type, as written
    offset: int  # from the start of the data section
    size: int = 0  # bytes up to the next tensor (or the end of the file)


@dataclass
class GGUFHeader:
    magic_version: bytes
    raw: dict[str, tuple[int, bytes]]  # key -> (value type, encoded value), in file order
    values: dict[str, object]  # decoded values, but for long string arrays (the vocabulary)
    tensors: list[TensorInfo]
    alignment: int
    data_start: int

    @property
    def arch(self) -> str:
        return str(self.values["general.architecture"])

    @property
    def n_blocks(self) -> int:
        return int(self.values[f"{self.arch}.block_count"])

    def block_tensors(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for t in self.tensors:
            m = _BLOCK.match(t.name)
            if m:
                out.setdefault(int(m[1]), []).append(m[2])
        return out


def read_gguf(path: Path) -> GGUFHeader:
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
            r = _Cursor(f, data)
            if r.take(4) != b"GGUF":
                raise ValueError("not a GGUF file")
            (version,) = r.unpack("<I")
            if version not in (2, 3):
                raise ValueError(f"GGUF version {version}")
            n_tensors, n_kv = r.unpack("<QQ")
            raw, values = {}, {}
            for _ in range(n_kv):
                key = r.string()
                (vtype,) = r.unpack("<I")
                start = r.mark = r.pos
                values[key] = r.value(vtype)
                raw[key] = (vtype, r.bytes_since(start))
            tensors = []
            for _ in range(n_tensors):
                name = r.string()
                start = r.mark = r.pos
                (n_dims,) = r.unpack("<I")
                r.unpack(f"<{n_dims}Q")
                r.unpack("<I")
                shape_and_type = r.bytes_since(start)
                (offset,) = r.unpack("<Q")
                tensors.append(TensorInfo(name, shape_and_type, offset))
            alignment = int(values.get("general.alignment", 32))
            data_start = _align(r.pos, alignment)
            size = os.fstat(f.fileno()).st_size - data_start
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as e:
        raise SpecError(f"cannot read {path} as a GGUF file: {e}") from None
    ends = sorted({t.offset for t in tensors} | {size})
    for t in tensors:
        t.size = ends[ends.index(t.offset) + 1] - t.offset
    return GGUFHeader(struct.pack("<4sI", b"GGUF", version), raw, values, tensors, alignment, data_start)


class _Cursor:
    """Reads a file's header sequentially, a MiB at a time."""

    def __init__(self, f, data: bytes):
        self.f, self.buf, self.base, self.pos = f, data, 0, 0
        self.mark = 0  # bytes from here on are kept until bytes_since() reads them

    def take(self, n: int) -> bytes:
        while self.pos + n > self.base + len(self.buf):
            more = self.f.read(max(1 << 20, n))
            if not more:
                raise ValueError("the file ends inside its header")
            keep_from = min(self.pos, self.mark) - self.base
            self.base += keep_from
            self.buf = self.buf[keep_from:] + more
        out = self.buf[self.pos - self.base : self.pos - self.base + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def string(self) -> str:
        (n,) = self.unpack("<Q")
        return self.take(n).decode("utf-8")

    def value(self, vtype: int):
        if vtype in _SCALAR:
            return self.unpack("<" + _SCALAR[vtype])[0]
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, n = self.unpack("<IQ")
            if itype in _SCALAR:
                return list(self.unpack(f"<{n}{_SCALAR[itype]}"))
            items = [self.value(itype) for _ in range(n)]
            return items if n <= 1024 else None  # the vocabulary: copied, never needed
        raise ValueError(f"unknown GGUF value type {vtype}")

    def bytes_since(self, start: int) -> bytes:
        out = self.buf[start - self.base : self.pos - self.base]
        self.mark = self.pos
        return out


def _encode_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _encode_scalar(vtype: int, value) -> bytes:
    return struct.pack("<" + _SCALAR[vtype], value)


def _encode_array(raw: bytes, items: list) -> bytes:
    (itype,) = struct.unpack("<I", raw[:4])
    if itype not in _SCALAR:
        raise SpecError("a per-block metadata array of strings cannot be cut")
    return struct.pack("<IQ", itype, len(items)) + struct.pack(f"<{len(items)}{_SCALAR[itype]}", *items)


def _align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def _copy(fin, out, n: int) -> None:
    while n > 0:
        chunk = fin.read(min(n, 16 << 20))
        if not chunk:
            raise OSError("the source file is shorter than its tensors")
        out.write(chunk)
        n -= len(chunk)


def format_blocks(keep: Sequence[int]) -> str:
    """0-5,9,12-13: runs of consecutive blocks as ranges."""
    out, start = [], None
    for i, b in enumerate(keep):
        if start is None:
            start = b
        if i + 1 == len(keep) or keep[i + 1] != b + 1:
            out.append(f"{start}" if start == b else f"{start}-{b}")
            start = None
    return ",".join(out)
