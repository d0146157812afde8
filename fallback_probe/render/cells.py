"""Markdown cells that survive any text: op names, paths, test ids and errors come from users.

Every markdown the project writes (report, diff, pytest session report, step summary) puts
user-supplied text through :func:`cell`, so a ``|`` cannot split a table row, a newline cannot
end one, and ``<stdin>``, ``__init__`` or a backtick cannot turn into HTML, emphasis or code.
The rules follow GitHub's renderer (cmark-gfm); tests/test_markdown_cells.py renders with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from tabulate import tabulate

# Inline markup that would change the text wherever it stands.
_ALWAYS = frozenset("\\`*~|<")
_ENTITY_START = re.compile(r"[#A-Za-z0-9]")
# What starts a block when a line begins with it (in a list item or a quote): a heading, a
# quote, a nested list or thematic break, a task box. The group is the character to escape.
_BLOCK_START = re.compile(
    r"(#)#{0,5}(?:[ \t]|$)|(>)|([-+])(?:[ \t]|$)|(-)(?:[ \t]*-){2,}[ \t]*$|(\[)[ xX]\](?:[ \t]|$)"
    r"|\d{1,9}([.)])(?:[ \t]|$)"
)
_EDGE_SPACE = {" ": "&#32;", "\t": "&#9;"}  # cells are trimmed: keep the user's spaces
_NEWLINE = re.compile(r"\r\n|\r|\n")


def cell(text: object, *, code: bool = False, in_table: bool = True) -> str:
    """``text`` as markdown that renders back to exactly ``text``: as a code span when
    ``code``, else as plain text; in a table cell, or (``in_table=False``) in a paragraph,
    a list item or a quote. Newlines become ``<br>``: a table row has no other line break.

    A text cell must not be followed directly by ``(``, ``[`` or ``:`` (a ``]`` ending it
    would make a link). A bare URL followed directly by markup characters may show a
    backslash: GitHub's autolinks take escapes literally."""
    lines = _NEWLINE.split(str(text))
    return "<br>".join(_code(line, in_table) if code else _text(line) for line in lines)


def cell_list(items: Sequence[str], limit: int | None = None, in_table: bool = True) -> str:
    """Names as code spans, comma-separated, the rest counted: ```a`, `b` +3``."""
    shown = items if limit is None else items[:limit]
    text = ", ".join(cell(i, code=True, in_table=in_table) for i in shown)
    return text + (f" +{len(items) - len(shown)}" if len(items) > len(shown) else "")


def table(rows: Iterable[Sequence[object]], headers: Sequence[str]) -> str:
    """A GitHub table of cells already made by :func:`cell`; tabulate must not touch them
    (its number parsing turns a ``1e5`` cell into ``100000``)."""
    return tabulate(
        [list(r) for r in rows], headers=list(headers), tablefmt="github", disable_numparse=True
    )


def fenced(text: str, info: str = "") -> str:
    """A fenced code block longer than any backtick run inside ``text``."""
    fence = "`" * max(3, _longest_run(text, "`") + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def _text(line: str) -> str:
    out = []
    for i, ch in enumerate(line):
        nxt = line[i + 1] if i + 1 < len(line) else ""
        prev = line[i - 1] if i else ""
        if (
            ch in _ALWAYS
            or (ch == "_" and not (prev.isalnum() and nxt.isalnum()))  # intraword _ is inert
            or (ch == "&" and _ENTITY_START.match(nxt))
            or (ch == "]" and nxt in ("(", "[", ":"))  # links, references, definitions
        ):
            out.append("\\" + ch)
        else:
            out.append(ch)
    start = _BLOCK_START.match(line)
    if start:
        k = next(start.start(g) for g in range(1, 7) if start.group(g) is not None)
        out[k] = "\\" + out[k]
    return _keep_edges(line, "".join(out))


def _keep_edges(line: str, escaped: str) -> str:
    lead = len(line) - len(line.lstrip(" \t"))
    if lead == len(line):
        return "".join(_EDGE_SPACE[c] for c in line)
    trail = len(line) - len(line.rstrip(" \t"))
    body = escaped[lead : len(escaped) - trail]
    head = "".join(_EDGE_SPACE[c] for c in line[:lead])
    tail = "".join(_EDGE_SPACE[c] for c in line[len(line) - trail :])
    return head + body + tail


def _code(line: str, in_table: bool) -> str:
    if not line:
        return ""
    fence = "`"
    runs = {len(m) for m in re.findall(r"`+", line)}
    while len(fence) in runs:
        fence += "`"
    # GitHub splits table rows before it reads code spans, then unescapes \| in them.
    body = line.replace("|", "\\|") if in_table else line
    # A code span drops one space at each end when both are spaces, and a backtick at an end
    # would merge with the fence: pad, and the padding is what gets dropped.
    if line[0] == "`" or line[-1] == "`" or (line[0] == line[-1] == " " and line.strip(" ")):
        body = f" {body} "
    return f"{fence}{body}{fence}"


def _longest_run(text: str, ch: str) -> int:
    return max((len(m) for m in re.findall(re.escape(ch) + "+", text)), default=0)
