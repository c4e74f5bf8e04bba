"""A minimal reader of the kernel's BTF: enough to find struct member offsets.

procsentry never trusts the struct layouts of the kernel headers bcc compiles against: those
headers are often from another kernel (see monitor/sensors/bpf/offsets.py). The running kernel describes its
own types in /sys/kernel/btf/vmlinux (format: Documentation/bpf/btf.rst), and that is the only
source of truth for where `task_struct.real_parent` lives.

Only the parts needed for member offsets are decoded; every kind is still walked so the type ids
line up.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

BTF_MAGIC = 0xEB9F

# Kinds (include/uapi/linux/btf.h)
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

# Bytes that follow the 12-byte struct btf_type, as (fixed, per vlen entry).
_TRAILER = {
    KIND_INT: (4, 0),
    KIND_PTR: (0, 0),
    KIND_ARRAY: (12, 0),
    KIND_STRUCT: (0, 12),
    KIND_UNION: (0, 12),
    KIND_ENUM: (0, 8),
    KIND_FWD: (0, 0),
    KIND_TYPEDEF: (0, 0),
    KIND_VOLATILE: (0, 0),
    KIND_CONST: (0, 0),
    KIND_RESTRICT: (0, 0),
    KIND_FUNC: (0, 0),
    KIND_FUNC_PROTO: (0, 8),
    KIND_VAR: (4, 0),
    KIND_DATASEC: (0, 12),
    KIND_FLOAT: (0, 0),
    KIND_DECL_TAG: (4, 0),
    KIND_TYPE_TAG: (0, 0),
    KIND_ENUM64: (0, 12),
}
_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)


class BTFError(Exception):
    """The BTF blob is absent, malformed, or lacks a type or member we need."""


@dataclass(frozen=True, slots=True)
class Member:
    """Where a member lives inside its outermost struct."""

    offset: int  # bytes from the start of the outer struct
    size: int  # bytes (after resolving typedefs/modifiers)
    kind: int  # KIND_* of the resolved member type
    type_id: int


class BTF:
    """Parsed type table of one BTF blob (only what offsets need is kept)."""

    __slots__ = ("_data", "_strings_at", "_kind", "_size_or_type", "_vlen", "_kflag", "_body",
                 "_name_off", "_structs_by_name")

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BTFError("BTF blob too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise BTFError(f"bad BTF magic {magic:#x} (big-endian BTF is not supported)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self._data = data
        self._strings_at = hdr_len + str_off
        types_start = hdr_len + type_off
        types_end = types_start + type_len
        if types_end > len(data) or self._strings_at + str_len > len(data):
            raise BTFError("BTF sections run past the end of the blob")

        # Parallel arrays indexed by type id (id 0 is "void").
        kind = [0]
        size_or_type = [0]
        vlen_a = [0]
        kflag_a = [0]
        body = [0]
        name_off_a = [0]
        structs: dict[str, int] = {}
        unpack = struct.Struct("<III").unpack_from
        pos = types_start
        trailer = _TRAILER
        while pos < types_end:
            name_off, info, sot = unpack(data, pos)
            k = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            try:
                fixed, per = trailer[k]
            except KeyError:
                raise BTFError(f"unknown BTF kind {k} at byte {pos}") from None
            tid = len(kind)
            kind.append(k)
            size_or_type.append(sot)
            vlen_a.append(vlen)
            kflag_a.append(info >> 31)
            body.append(pos + 12)
            name_off_a.append(name_off)
            if (k == KIND_STRUCT or k == KIND_UNION) and name_off:
                # The first complete definition wins; FWD declarations are a different kind.
                structs.setdefault(self._str(name_off), tid)
            pos += 12 + fixed + per * vlen
        self._kind = kind
        self._size_or_type = size_or_type
        self._vlen = vlen_a
        self._kflag = kflag_a
        self._body = body
        self._name_off = name_off_a
        self._structs_by_name = structs

    @classmethod
    def from_file(cls, path: str) -> "BTF":
        try:
            with open(path, "rb") as f:
                return cls(f.read())
        except OSError as e:
            raise BTFError(f"cannot read {path}: {e.strerror}") from e

    def _str(self, off: int) -> str:
        start = self._strings_at + off
        end = self._data.index(b"\0", start)
        return self._data[start:end].decode("ascii", "replace")

    def _resolve(self, tid: int) -> int:
        """Skip typedefs and qualifiers."""
        for _ in range(64):
            if self._kind[tid] not in _MODIFIERS:
                return tid
            tid = self._size_or_type[tid]
        raise BTFError("typedef chain too long")

    def _sizeof(self, tid: int) -> int:
        tid = self._resolve(tid)
        k = self._kind[tid]
        if k in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FLOAT):
            return self._size_or_type[tid]
        if k == KIND_PTR:
            return 8
        if k == KIND_ARRAY:
            elem, _index, nelems = struct.unpack_from("<III", self._data, self._body[tid])
            return self._sizeof(elem) * nelems
        return 0

    def struct_id(self, name: str) -> int:
        try:
            return self._structs_by_name[name]
        except KeyError:
            raise BTFError(f"struct {name} not in BTF") from None

    def has_struct(self, name: str) -> bool:
        return name in self._structs_by_name

    def struct_size(self, name: str) -> int:
        return self._size_or_type[self.struct_id(name)]

    def _members(self, tid: int):
        base = self._body[tid]
        bitfields = self._kflag[tid]
        for i in range(self._vlen[tid]):
            name_off, mtype, off = struct.unpack_from("<III", self._data, base + 12 * i)
            bit_off = off & 0xFFFFFF if bitfields else off
            yield name_off, mtype, bit_off

    def _find_member(self, tid: int, name: str) -> tuple[int, int] | None:
        """(bit offset, type id) of `name` in struct/union `tid`, looking inside anonymous members."""
        for name_off, mtype, bit_off in self._members(tid):
            if name_off:
                if self._str(name_off) == name:
                    return bit_off, mtype
                continue
            inner = self._resolve(mtype)
            if self._kind[inner] in (KIND_STRUCT, KIND_UNION):
                found = self._find_member(inner, name)
                if found is not None:
                    return bit_off + found[0], found[1]
        return None

    def member(self, struct_name: str, path: str) -> Member:
        """Offset of a dotted member path such as ``"fs_struct" , "pwd.dentry"``.

        Each step must be embedded (not behind a pointer); anonymous structs and unions are
        searched transparently, the way C name lookup works.
        """
        tid = self.struct_id(struct_name)
        total_bits = 0
        mtype = tid
        for part in path.split("."):
            container = self._resolve(mtype)
            if self._kind[container] not in (KIND_STRUCT, KIND_UNION):
                raise BTFError(f"{struct_name}.{path}: {part!r} is not inside a struct")
            found = self._find_member(container, part)
            if found is None:
                raise BTFError(f"{struct_name} has no member {path}")
            bit_off, mtype = found
            total_bits += bit_off
        if total_bits % 8:
            raise BTFError(f"{struct_name}.{path} is a bitfield")
        resolved = self._resolve(mtype)
        return Member(total_bits // 8, self._sizeof(mtype), self._kind[resolved], resolved)

    def has_member(self, struct_name: str, path: str) -> bool:
        try:
            self.member(struct_name, path)
            return True
        except BTFError:
            return False
