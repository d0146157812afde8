"""Read operator registrations out of a compiled arm64 Mach-O library, without running it.

``TORCH_LIBRARY_IMPL(ns, KEY, m)`` compiles to a function ``TORCH_LIBRARY_IMPL_init_ns_KEY_N``
(a local symbol the wheels keep). Each ``m.impl("op", kernel)`` in it builds the kernel
(a call to ``makeFromBoxedFunction<&mps_fallback>``, or the address of a C++ function),
loads the op-name string with an ``adrp``/``add`` pair, and calls ``Library::_impl``. Decoding
those three instruction kinds over the function's code recovers every ``(op, kernel)`` pair:
the compiler, not the source, says what the release registers.
"""

from __future__ import annotations

import bisect
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

_MH_MAGIC_64 = 0xFEEDFACF
_FAT_MAGIC = 0xCAFEBABE
_CPU_ARM64 = 0x0100000C
_LC_SEGMENT_64 = 0x19
_LC_SYMTAB = 0x2
_LC_DYSYMTAB = 0xB
_S_SYMBOL_STUBS = 0x8
_N_STAB = 0xE0
_N_TYPE = 0x0E
_N_SECT = 0x0E
# Library::_impl / Library::impl<...>: the call that registers one kernel.
_IMPL_CALL = re.compile(r"7Library\d*_?impl")


class MachOError(ValueError):
    """Not a 64-bit arm64 Mach-O image, or one without the expected sections / symbols."""


@dataclass(frozen=True, slots=True)
class Registration:
    """One ``m.impl(op, kernel)``: the op string and every symbol the kernel setup touched."""

    op: str
    kernel_symbols: tuple[str, ...]

    def uses(self, pattern: re.Pattern[str]) -> bool:
        return any(pattern.search(symbol) for symbol in self.kernel_symbols)


@dataclass(frozen=True, slots=True)
class _Section:
    segment: str
    name: str
    addr: int
    size: int
    offset: int
    flags: int = 0
    reserved1: int = 0  # symbol stubs: first index into the indirect symbol table
    reserved2: int = 0  # symbol stubs: the size of one stub


class MachO:
    """Sections and defined symbols of one arm64 Mach-O image held in memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        if len(data) < 32:
            raise MachOError("too short for a Mach-O header")
        magic = struct.unpack_from("<I", data, 0)[0]
        if struct.unpack_from(">I", data, 0)[0] == _FAT_MAGIC:
            data = self.data = _arm64_slice(data)
            magic = struct.unpack_from("<I", data, 0)[0]
        if magic != _MH_MAGIC_64:
            raise MachOError(f"not a 64-bit little-endian Mach-O image (magic {magic:#x})")
        cpu, _, _, ncmds = struct.unpack_from("<iiII", data, 4)
        if cpu != _CPU_ARM64:
            raise MachOError(f"not an arm64 image (cputype {cpu:#x})")
        self.sections: list[_Section] = []
        symtab: tuple[int, int, int, int] | None = None
        indirect: tuple[int, int] = (0, 0)
        offset = 32
        for _ in range(ncmds):
            cmd, size = struct.unpack_from("<II", data, offset)
            if cmd == _LC_SEGMENT_64:
                nsects = struct.unpack_from("<I", data, offset + 64)[0]
                for index in range(nsects):
                    at = offset + 72 + 80 * index
                    name = data[at : at + 16].rstrip(b"\0").decode()
                    segment = data[at + 16 : at + 32].rstrip(b"\0").decode()
                    addr, sect_size, sect_offset = struct.unpack_from("<QQI", data, at + 32)
                    flags, res1, res2 = struct.unpack_from("<III", data, at + 64)
                    self.sections.append(
                        _Section(segment, name, addr, sect_size, sect_offset, flags, res1, res2)
                    )
            elif cmd == _LC_SYMTAB:
                symtab = struct.unpack_from("<IIII", data, offset + 8)
            elif cmd == _LC_DYSYMTAB:
                indirect = struct.unpack_from("<II", data, offset + 56)
            offset += size
        if symtab is None:
            raise MachOError("no symbol table (a stripped image cannot be read this way)")
        self._symbols = self._read_symbols(*symtab)
        self._addrs = [addr for addr, _ in self._symbols]
        self._by_addr = dict(self._symbols)
        self._by_addr.update(self._stubs(symtab, indirect))
        self._text = self._section("__TEXT", "__text")
        self._cstring = self._section("__TEXT", "__cstring")

    def _section(self, segment: str, name: str) -> _Section:
        for section in self.sections:
            if section.segment == segment and section.name == name:
                return section
        raise MachOError(f"no {segment},{name} section")

    def _read_symbols(self, symoff: int, nsyms: int, stroff: int, _: int) -> list[tuple[int, str]]:
        data = self.data
        out = []
        for strx, ntype, _sect, _desc, value in struct.iter_unpack(
            "<IBBHQ", data[symoff : symoff + 16 * nsyms]
        ):
            if ntype & _N_STAB or ntype & _N_TYPE != _N_SECT:
                continue
            end = data.index(b"\0", stroff + strx)
            out.append((value, data[stroff + strx : end].decode("latin-1")))
        out.sort()
        return out

    def _stubs(
        self, symtab: tuple[int, int, int, int], indirect: tuple[int, int]
    ) -> dict[int, str]:
        """``{stub address: imported symbol}``: calls into other libraries go through stubs."""
        symoff, nsyms, stroff, _ = symtab
        indirect_off, count = indirect
        out = {}
        for section in self.sections:
            if section.flags & 0xFF != _S_SYMBOL_STUBS or not section.reserved2:
                continue
            for index in range(section.size // section.reserved2):
                slot = section.reserved1 + index
                if slot >= count:
                    break
                symbol = struct.unpack_from("<I", self.data, indirect_off + 4 * slot)[0]
                if symbol >= nsyms:  # INDIRECT_SYMBOL_LOCAL / _ABS
                    continue
                strx = struct.unpack_from("<I", self.data, symoff + 16 * symbol)[0]
                end = self.data.index(b"\0", stroff + strx)
                name = self.data[stroff + strx : end].decode("latin-1")
                out[section.addr + index * section.reserved2] = name
        return out

    def functions(self, pattern: re.Pattern[str]) -> Iterator[tuple[str, int, int]]:
        """``(symbol, start, end)`` of each function in __text whose name matches ``pattern``.

        A function ends where the next symbol at a higher address starts.
        """
        text = self._text
        for index, (addr, name) in enumerate(self._symbols):
            if not pattern.search(name) or not text.addr <= addr < text.addr + text.size:
                continue
            nxt = bisect.bisect_right(self._addrs, addr, lo=index)
            end = self._addrs[nxt] if nxt < len(self._addrs) else text.addr + text.size
            yield name, addr, min(end, text.addr + text.size)

    def cstring(self, addr: int) -> str | None:
        section = self._cstring
        if not section.addr <= addr < section.addr + section.size:
            return None
        start = section.offset + addr - section.addr
        return self.data[start : self.data.index(b"\0", start)].decode("latin-1")

    def text_range(self) -> tuple[int, int]:
        return self._text.addr, self._text.addr + self._text.size

    def scan(self, start: int, end: int) -> Iterator[Event]:
        """Calls and string loads in ``[start, end)``, in code order.

        Registers are followed through ``adrp``+``add``, ``adr`` and ``mov``: a call event
        carries the C strings then held in x0-x3 (its first four arguments) and the symbols
        whose address was taken, or stored / moved out of a register, since the previous
        call (a compiler may load ``&make_boxed_function<&mps_fallback>`` once into a
        callee-saved register and store it for each registration). A call clobbers x0-x18.
        """
        text = self._text
        code = self.data[text.offset + start - text.addr : text.offset + end - text.addr]
        pages: dict[int, int] = {}  # register -> page address set by adrp
        strings: dict[int, str] = {}  # register -> the C string it points at
        symbols: dict[int, str] = {}  # register -> the symbol it points at
        touched: list[str] = []

        def read(*registers: int) -> None:
            touched.extend(symbols[reg] for reg in registers if reg in symbols)

        for index, (word,) in enumerate(struct.iter_unpack("<I", code)):
            pc = start + 4 * index
            target: int | None = None
            if word & 0x9F000000 == 0x90000000:  # adrp xd, page
                pages[word & 31] = (pc & ~0xFFF) + (_adr_imm(word) << 12)
                strings.pop(word & 31, None)
                symbols.pop(word & 31, None)
            elif word & 0x9F000000 == 0x10000000:  # adr xd, label
                target = pc + _adr_imm(word)
            elif word & 0xFF800000 == 0x91000000:  # add xd, xn, #imm (64-bit)
                rn = (word >> 5) & 31
                if rn in pages:
                    imm = (word >> 10) & 0xFFF
                    target = pages[rn] + (imm << 12 if word & (1 << 22) else imm)
            elif word & 0xFFE0FFE0 == 0xAA0003E0:  # mov xd, xm
                rd, rm = word & 31, (word >> 16) & 31
                read(rm)
                for values in (strings, symbols):
                    if rm in values:
                        values[rd] = values[rm]
                    else:
                        values.pop(rd, None)
            elif word & 0xFFC00000 == 0xF9000000 or word & 0xFFE00C00 == 0xF8000000:
                read(word & 31)  # str / stur xt, [...]
            elif word & 0xFE400000 == 0xA8000000:
                read(word & 31, (word >> 10) & 31)  # stp xt, xt2, [...]
            elif word & 0xFC000000 == 0x94000000:  # bl label
                imm = word & 0x3FFFFFF
                callee = self._by_addr.get(pc + 4 * (imm - (1 << 26) if imm & (1 << 25) else imm))
                if callee is not None:
                    args = tuple(strings.get(reg) for reg in range(4))
                    yield Event(pc, callee, args, tuple(touched))
                    touched = [callee]
                for reg in range(19):
                    for values in (pages, strings, symbols):
                        values.pop(reg, None)
            if target is not None:
                rd = word & 31
                strings.pop(rd, None)
                symbols.pop(rd, None)
                string = self.cstring(target)
                if string is not None:
                    strings[rd] = string
                    yield Event(pc, None, (string,), ())
                elif (symbol := self._by_addr.get(target)) is not None:
                    symbols[rd] = symbol
                    touched.append(symbol)

    def registrations(self, start: int, end: int) -> list[Registration]:
        """Every ``Library::_impl(op, kernel)`` call in ``[start, end)``.

        The op is the call's second argument (x1, after ``this``); the kernel symbols are
        the functions called or whose address was taken since the previous registration.
        """
        out = []
        since: list[str] = []
        for event in self.scan(start, end):
            since.extend(event.touched)
            if event.callee is None or not _IMPL_CALL.search(event.callee):
                continue
            if event.args[1] is None:
                raise MachOError(f"the registration at {event.pc:#x} passes no op-name string")
            out.append(Registration(event.args[1], tuple(since)))
            since = []
        return out


@dataclass(frozen=True, slots=True)
class Event:
    """A ``bl`` (``callee`` set, ``args`` = strings in x0-x3) or a string load (``callee`` None)."""

    pc: int
    callee: str | None
    args: tuple[str | None, ...]
    touched: tuple[str, ...]


def _adr_imm(word: int) -> int:
    imm = ((word >> 5) & 0x7FFFF) << 2 | (word >> 29) & 3
    return imm - (1 << 21) if imm & (1 << 20) else imm


def _arm64_slice(data: bytes) -> bytes:
    count = struct.unpack_from(">I", data, 4)[0]
    for index in range(count):
        cpu, _, offset, size, _ = struct.unpack_from(">iIIII", data, 8 + 20 * index)
        if cpu == _CPU_ARM64:
            return data[offset : offset + size]
    raise MachOError("a universal image without an arm64 slice")


def library_impl_functions(namespace: str, key: str) -> re.Pattern[str]:
    """The symbols of ``TORCH_LIBRARY_IMPL(namespace, key, m)`` bodies (any uid)."""
    return re.compile(rf"TORCH_LIBRARY_IMPL_init_{re.escape(namespace)}_{re.escape(key)}_\d+E")
