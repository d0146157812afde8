"""Assemble a tiny arm64 Mach-O image: named functions of a few instructions, C strings.

Only what a registration body compiles to: ``adrp``+``add`` (a string or a symbol's
address), ``bl``, ``stp xzr, xN`` (storing a hoisted kernel pointer) and ``mov``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

TEXT = 0x1000
Op = tuple  # ("load", reg, "str:text" | "sym:name") | ("bl", name) | ("stp", reg) | ("mov", rd, rm)


def _size(op: Op) -> int:
    return 8 if op[0] == "load" else 4


def image(functions: Sequence[tuple[str, Sequence[Op]]], helpers: Sequence[str] = ()) -> bytes:
    """``functions``: (symbol, ops); ``helpers``: symbols defined as one ``ret`` each."""
    bodies = [(name, list(ops)) for name, ops in functions] + [(h, []) for h in helpers]
    addrs: dict[str, int] = {}
    pc = TEXT
    for name, ops in bodies:
        addrs[name] = pc
        pc += sum(_size(op) for op in ops) + 4  # + ret
    text_size = pc - TEXT
    strings: dict[str, int] = {}
    cstring_addr = (pc + 0xFFF) & ~0xFFF
    blob = b""
    for _, ops in bodies:
        for op in ops:
            if op[0] == "load" and op[2].startswith("str:") and op[2][4:] not in strings:
                strings[op[2][4:]] = cstring_addr + len(blob)
                blob += op[2][4:].encode() + b"\0"
    code = b""
    for _, ops in bodies:
        for op in ops:
            at = TEXT + len(code)
            if op[0] == "load":
                kind, value = op[2].split(":", 1)
                target = strings[value] if kind == "str" else addrs[value]
                delta = (target >> 12) - (at >> 12)
                rd = op[1]
                adrp = 0x90000000 | (delta & 3) << 29 | ((delta >> 2) & 0x7FFFF) << 5 | rd
                add = 0x91000000 | (target & 0xFFF) << 10 | rd << 5 | rd
                code += struct.pack("<II", adrp, add)
            elif op[0] == "bl":
                code += struct.pack("<I", 0x94000000 | ((addrs[op[1]] - at) >> 2) & 0x3FFFFFF)
            elif op[0] == "stp":  # stp xzr, xN, [sp, #0x70]
                code += struct.pack("<I", 0xA9000000 | 14 << 15 | op[1] << 10 | 31 << 5 | 31)
            elif op[0] == "mov":
                code += struct.pack("<I", 0xAA0003E0 | op[2] << 16 | op[1])
            else:
                raise ValueError(op)
        code += struct.pack("<I", 0xD65F03C0)  # ret
    assert len(code) == text_size
    strtab = b"\0"
    nlist = b""
    for name, addr in addrs.items():
        nlist += struct.pack("<IBBHQ", len(strtab), 0x0E, 1, 0, addr)
        strtab += name.encode() + b"\0"
    cmds_size = (72 + 2 * 80) + 24
    symoff = cstring_addr + len(blob)
    stroff = symoff + len(nlist)
    header = struct.pack("<IiiIIIII", 0xFEEDFACF, 0x0100000C, 0, 6, 2, cmds_size, 0, 0)
    segment = struct.pack(
        "<II16sQQQQiiII",
        0x19,
        72 + 2 * 80,
        b"__TEXT",
        0,
        stroff + len(strtab),
        0,
        stroff + len(strtab),
        7,
        5,
        2,
        0,
    )

    def section(name: bytes, addr: int, size: int) -> bytes:
        return struct.pack(
            "<16s16sQQIIIIIIII", name, b"__TEXT", addr, size, addr, 2, 0, 0, 0, 0, 0, 0
        )

    symtab = struct.pack("<IIIIII", 0x2, 24, symoff, len(addrs), stroff, len(strtab))
    out = bytearray(stroff + len(strtab))
    head = header + segment + section(b"__text", TEXT, text_size)
    head += section(b"__cstring", cstring_addr, len(blob)) + symtab
    out[: len(head)] = head
    out[TEXT : TEXT + text_size] = code
    out[cstring_addr : cstring_addr + len(blob)] = blob
    out[symoff:stroff] = nlist
    out[stroff:] = strtab
    return bytes(out)
