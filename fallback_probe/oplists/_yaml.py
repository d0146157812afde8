"""A strict parser for the YAML subset that ``native_functions.yaml`` uses.

Why not PyYAML: it is not a dependency of torch or of this package, and torchgen's own loader
(``torchgen.gen``) imports it. The subset is small: block sequences and mappings, plain and
quoted scalars, one-line flow lists/maps (``[core, pointwise]``, ``{}``) and ``#`` comments.
Anything outside it raises :class:`YamlError` rather than being guessed at, so a release that
starts using new syntax fails the generator loudly.
"""

from __future__ import annotations

import re
from typing import Any

_INT = re.compile(r"[-+]?[0-9]+\Z")
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_NULLS = {"", "~", "null", "Null", "NULL"}


class YamlError(ValueError):
    """The text is outside the supported subset (or is not valid YAML)."""


class _Line:
    __slots__ = ("indent", "text", "num")

    def __init__(self, indent: int, text: str, num: int) -> None:
        self.indent, self.text, self.num = indent, text, num


def load(text: str) -> Any:
    """Parse ``text``; the result matches ``yaml.safe_load`` for the supported subset."""
    lines = _lines(text)
    if not lines:
        return None
    value, pos = _block(lines, 0, lines[0].indent)
    if pos != len(lines):
        raise YamlError(f"line {lines[pos].num}: unexpected indentation")
    return value


def _lines(text: str) -> list[_Line]:
    out: list[_Line] = []
    for num, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise YamlError(f"line {num}: tab in indentation")
        body = _strip_comment(raw, num).rstrip()
        if body.strip() in ("", "---"):
            continue
        stripped = body.lstrip(" ")
        out.append(_Line(len(body) - len(stripped), stripped, num))
    return out


def _strip_comment(line: str, num: int) -> str:
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"" and (i == 0 or line[i - 1] in " \t[{,:"):
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    if quote:
        raise YamlError(f"line {num}: unterminated quote (multi-line scalars are unsupported)")
    return line


def _block(lines: list[_Line], pos: int, indent: int) -> tuple[Any, int]:
    line = lines[pos]
    if line.text == "-" or line.text.startswith("- "):
        return _sequence(lines, pos, indent)
    return _mapping(lines, pos, indent)


def _sequence(lines: list[_Line], pos: int, indent: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    while pos < len(lines) and lines[pos].indent == indent:
        line = lines[pos]
        if not (line.text == "-" or line.text.startswith("- ")):
            break
        rest = line.text[1:].lstrip(" ")
        if not rest:
            if pos + 1 < len(lines) and lines[pos + 1].indent > indent:
                value, pos = _block(lines, pos + 1, lines[pos + 1].indent)
            else:
                value, pos = None, pos + 1
        elif _split_key(rest) is not None:
            # "- key: value": a mapping whose keys sit at the column after "- ".
            column = indent + (len(line.text) - len(rest))
            lines[pos] = _Line(column, rest, line.num)
            value, pos = _mapping(lines, pos, column)
        else:
            value, pos = _scalar(rest, line.num), pos + 1
        items.append(value)
    return items, pos


def _mapping(lines: list[_Line], pos: int, indent: int) -> tuple[dict[str, Any], int]:
    result: dict[str, Any] = {}
    while pos < len(lines) and lines[pos].indent == indent:
        line = lines[pos]
        if line.text.startswith("- ") or line.text == "-":
            break
        split = _split_key(line.text)
        if split is None:
            raise YamlError(f"line {line.num}: expected 'key: value', got {line.text!r}")
        key, rest = split
        if key in result:
            raise YamlError(f"line {line.num}: duplicate key {key!r}")
        pos += 1
        if rest:
            result[key] = _scalar(rest, line.num)
        elif pos < len(lines) and lines[pos].indent > indent:
            result[key], pos = _block(lines, pos, lines[pos].indent)
        elif pos < len(lines) and lines[pos].indent == indent and lines[pos].text.startswith("-"):
            result[key], pos = _sequence(lines, pos, indent)  # "key:\n- item" at the same column
        else:
            result[key] = None
    return result, pos


def _split_key(text: str) -> tuple[str, str] | None:
    """``"a: b"`` -> ``("a", "b")``; ``"a:"`` -> ``("a", "")``; a non-mapping line -> None."""
    if text[0] in "'\"[{":
        return None
    idx = text.find(": ")
    if idx == -1:
        if not text.endswith(":"):
            return None
        idx = len(text) - 1
    key = text[:idx].rstrip()
    return key, text[idx + 1 :].strip()


def _scalar(text: str, num: int) -> Any:
    text = text.strip()
    if text.startswith("["):
        if not text.endswith("]"):
            raise YamlError(f"line {num}: multi-line flow sequences are unsupported")
        return [_scalar(part, num) for part in _flow_items(text[1:-1], num)]
    if text.startswith("{"):
        if not text.endswith("}"):
            raise YamlError(f"line {num}: multi-line flow mappings are unsupported")
        out: dict[str, Any] = {}
        for part in _flow_items(text[1:-1], num):
            split = _split_key(part)
            if split is None:
                raise YamlError(f"line {num}: bad flow mapping entry {part!r}")
            out[split[0]] = _scalar(split[1], num)
        return out
    if text[:1] == "'":
        if len(text) < 2 or not text.endswith("'"):
            raise YamlError(f"line {num}: bad single-quoted scalar")
        return text[1:-1].replace("''", "'")
    if text[:1] == '"':
        if len(text) < 2 or not text.endswith('"') or "\\" in text:
            raise YamlError(f"line {num}: unsupported double-quoted scalar")
        return text[1:-1]
    if text[:1] in "&*!|>%@`":
        raise YamlError(f"line {num}: unsupported YAML feature in {text!r}")
    if text in _NULLS:
        return None
    if text in _BOOLS:
        return _BOOLS[text]
    if _INT.match(text):
        return int(text)
    return text


def _flow_items(inner: str, num: int) -> list[str]:
    items: list[str] = []
    depth, quote, start = 0, "", 0
    for i, ch in enumerate(inner):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(inner[start:i])
            start = i + 1
    if quote or depth:
        raise YamlError(f"line {num}: unbalanced flow collection")
    items.append(inner[start:])
    items = [item.strip() for item in items]
    if items == [""]:
        return []
    if "" in items:
        raise YamlError(f"line {num}: empty item in flow collection")
    return items
