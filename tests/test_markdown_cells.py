"""Every markdown table keeps its shape for any text users' code puts in it.

The markdown is rendered by cmark-gfm, GitHub's own renderer (``cmarkgfm``), and the HTML
tables are read back: each hostile text must come back whole, in its own column, and the
columns after it must still hold what they held.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import cmarkgfm
import pytest
from cmarkgfm.cmark import Options

from fallback_probe.classify.rules import Judgement
from fallback_probe.diff import Change, Diff, render_diff
from fallback_probe.records import Mode, OpCall, TensorMeta, Verdict
from fallback_probe.render import Format, render
from fallback_probe.render.cells import cell, cell_list, fenced, table
from fallback_probe.report import Host, Matrix, NotJudged, Report, Target, build_rows

pytest_plugins = ["pytester"]

ROOT = Path(__file__).parent.parent
# What users' code can put in a report: test ids, module paths, source paths, error messages.
TEST_ID = "test_x[a|b]"
MODULE = "enc|dec"
SOURCE = "we|ird `x`.py:3"
ERROR = "RuntimeError: bad `x` here\nsecond | line <stdin> __init__ *a* [b](c)"
HOSTILE = (
    TEST_ID,
    MODULE,
    SOURCE,
    ERROR,
    "a|b|c",
    "``` fence ```",
    "`",
    "x``y",
    "  leading and trailing  ",
    "\tTab",
    "line\r\nwindows\rmac",
    "<script>alert(1)</script>",
    "<br>",
    "&amp; &#124; &lt;",
    "pkg/__init__.py:3",
    "**bold** _it_ ~~gone~~",
    "- [x] task",
    "# heading",
    "> quote",
    "1. first",
    "[link](http://example.com) ![img](x.png) [ref]: /url",
    "\\|",
    "trailing backslash\\",
    "",
    " ",
)


class _Tables(HTMLParser):
    """Rows of every table, each cell's text as a reader sees it (``<br>`` is a newline),
    and any element other than code, br and links (markup the text turned into; a link that
    ate text shows in the text)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.blocks: list[str] = []  # text of each li / blockquote
        self.paragraphs: list[str] = []  # text of each top-level paragraph
        self.markup: list[str] = []
        self._cell: list[str] | None = None
        self._block: list[str] | None = None
        self._para: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("li", "blockquote"):
            self._block = []
        elif tag == "p" and self._block is None:
            self._para = []
        elif tag == "br":
            for buf in (self._cell, self._block, self._para):
                if buf is not None:
                    buf.append("\n")
        elif (self._cell is not None or self._block is not None) and tag not in ("code", "p", "a"):
            self.markup.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None
        elif tag in ("li", "blockquote") and self._block is not None:
            self.blocks.append("".join(self._block))
            self._block = None
        elif tag == "p" and self._para is not None:
            self.paragraphs.append("".join(self._para))
            self._para = None

    def handle_data(self, data: str) -> None:
        for buf in (self._cell, self._block, self._para):
            if buf is not None:
                buf.append(data.replace("\n", ""))  # source newlines; a user's is a <br>


def gfm(md: str) -> _Tables:
    # GitHub keeps <br> (its sanitizer allows it); UNSAFE keeps it here too.
    html = cmarkgfm.github_flavored_markdown_to_html(md, options=Options.CMARK_OPT_UNSAFE)
    parsed = _Tables()
    parsed.feed(html)
    return parsed


def one_line(text: str) -> str:
    return re.sub(r"\r\n|\r", "\n", text)  # what comes back: every line break is one <br>


def table_after(md: str, heading: str) -> list[list[str]]:
    """The rows (header first) of the first table after ``heading``."""
    return gfm(md[md.index(heading) :]).tables[0]


# -- the function ---------------------------------------------------------------------------
@pytest.mark.parametrize("code", [False, True], ids=["text", "code"])
def test_hostile_text_comes_back_whole_in_its_column(code: bool) -> None:
    md = table([[cell(t, code=code), "next"] for t in HOSTILE], ["text", "sentinel"])
    parsed = gfm(md)
    assert len(parsed.tables) == 1
    head, *rows = parsed.tables[0]
    assert head == ["text", "sentinel"]
    assert rows == [[one_line(t), "next"] for t in HOSTILE]
    assert not parsed.markup


def test_random_text_round_trips() -> None:
    """Strings of markdown's special characters, seeded: no text, however odd, escapes."""
    alphabet = [*"ab_ 1.\\`*~|<>[]()!#&;:-+=\t\n@/'\"", "__init__", "<br>", "&amp;", "](", "1. "]
    rnd = random.Random(16)
    texts = ["".join(rnd.choices(alphabet, k=rnd.randint(1, 8))) for _ in range(1500)]
    for code in (False, True):
        parsed = gfm(table([[cell(t, code=code), "z"] for t in texts], ["t", "z"]))
        rows = parsed.tables[0][1:]
        bad = [(t, r) for t, r in zip(texts, rows, strict=True) if r != [one_line(t), "z"]]
        assert not bad[:5]
        assert not parsed.markup


@pytest.mark.parametrize("code", [False, True], ids=["text", "code"])
def test_text_in_list_items_and_quotes_stays_text(code: bool) -> None:
    texts = [t for t in HOSTILE if t.strip()]
    items = [f"- {cell(t, code=code, in_table=False)}" for t in texts]
    md = "\n".join(items) + "\n\n> " + cell(ERROR, code=code, in_table=False) + "\n"
    parsed = gfm(md)
    assert parsed.blocks == [*(one_line(t) for t in texts), ERROR]
    assert not parsed.tables and not parsed.markup


def test_cell_list_and_fence() -> None:
    items = ("a|b", "x`y", "c", "d")
    parsed = gfm(table([[cell_list(items, limit=3), "z"]], ["t", "z"]))
    assert parsed.tables[0][1] == ["a|b, x`y, c +1", "z"]
    cmd = "pytest 'test_x[```]'"
    assert re.search(r"<code[^>]*>(.*?)\n?</code>", cmarkgfm.markdown_to_html(fenced(cmd, "sh")))
    inner = re.search(r"<code[^>]*>(.*?)</code>", cmarkgfm.markdown_to_html(fenced(cmd)), re.S)
    assert inner and inner.group(1).rstrip("\n").replace("&#x27;", "'") == cmd


def test_numbers_stay_as_written() -> None:
    """tabulate parses number-like cells unless told not to: a module "1e5" is not 100000."""
    assert gfm(table([[cell("1e5"), cell("0012")]], ["a", "b"])).tables[0][1] == ["1e5", "0012"]


# -- each renderer ----------------------------------------------------------------------------
def _call(i: int, op: str, module: str, source: str, error: str | None = None) -> OpCall:
    t = TensorMeta("float32", (4, 8), 128, True)
    return OpCall(i, op, None, module, False, source, (t,), (t,), error=error)


def _hostile_report(mode: Mode = Mode.LIVE) -> Report:
    js = [
        Judgement(
            _call(0, "aten::mode", MODULE, SOURCE, error=ERROR),
            "aten::mode",
            Verdict.UNSUPPORTED,
            "raised",
        ),
        Judgement(
            _call(1, "my|lib::sub`x`", MODULE, SOURCE), "aten::sub.out", Verdict.FALLBACK, ERROR
        ),
        Judgement(_call(2, "my|lib::op", "`mod`", SOURCE), "my|lib::op", Verdict.NATIVE, "ok"),
        Judgement(_call(3, "aten::relu", " pad ", SOURCE), "aten::relu", Verdict.NATIVE, "ok"),
    ]
    rows, _ = build_rows(js)
    return Report(
        mode=mode,
        mode_reason="asked",
        target=Target("2.15.0", "15", "m|ps"),
        host=Host("2.13.0", "3.11", "linux"),
        complete=False,
        error=ERROR,
        ops=rows,
        not_judged=(NotJudged("x|y::op", 2, ERROR),),
        limits=(ERROR, "- [x] not a task"),
        matrix=Matrix(
            ("2.0.1", "2.15.0"), {"a|b::op": {"2.0.1": "fallback", "2.15.0": "-"}}, None, None
        ),
    )


@pytest.mark.parametrize("mode", [Mode.LIVE, Mode.PREDICTED])
def test_report_tables_keep_their_shape(mode: Mode) -> None:
    md = render(_hostile_report(mode), Format.MARKDOWN)
    parsed = gfm(md)
    assert parsed.markup == ["strong"]  # the report's own "**The run did not finish:**"
    problems = table_after(md, "## Fallbacks and unsupported ops")
    head = problems[0]
    assert all(len(r) == len(head) for r in problems)
    rows = {r[0]: dict(zip(head, r, strict=True)) for r in problems[1:]}
    mode_row = rows["aten::mode"]
    assert (mode_row["verdict"], mode_row["module"], mode_row["source"]) == (
        "unsupported",
        MODULE,
        SOURCE,
    )
    assert mode_row["why"] == ERROR
    sub = rows["aten::sub.out"]
    assert (sub["why"], sub["called as"]) == (ERROR, "my|lib::sub`x`")
    assert sub["module"] == MODULE and sub["dtypes"] == "float32"
    natives = table_after(md, "Native ops")
    assert sorted(natives[1:]) == [
        ["aten::relu", "", "1", " pad ", "float32"],
        ["my|lib::op", "", "1", "`mod`", "float32"],
    ]
    matrix = table_after(md, "## Across releases")
    assert matrix == [["op", "called as", "2.0.1", "2.15.0"], ["a|b::op", "", "fallback", "-"]]
    assert "m|ps" in md.replace("\\|", "|")
    assert parsed.blocks == [
        f"The run did not finish: {ERROR}",
        ERROR,
        "- [x] not a task",
        f"x|y::op (2 calls): not judged — {ERROR}",
    ]


def test_diff_tables_keep_their_shape() -> None:
    d = Diff(
        new=(
            Change("a|b::op", Verdict.FALLBACK, (MODULE,), (SOURCE,), ("x`y",)),
            Change("x`y", Verdict.UNSUPPORTED),
        ),
        resolved=(Change(TEST_ID, Verdict.FALLBACK, ("`mod`", " pad ")),),
        notes=(ERROR,),
    )
    md = render_diff(d, Format.MARKDOWN)
    parsed = gfm(md)
    head = ["op", "called as", "verdict", "module", "source"]
    assert parsed.tables == [
        [head, ["a|b::op", "x`y", "fallback", MODULE, SOURCE], ["x`y", "", "unsupported", "", ""]],
        [head, [TEST_ID, "", "fallback", "`mod`,  pad ", ""]],
    ]
    assert parsed.blocks == [ERROR] and not parsed.markup


# -- end to end: the CLI's step summary and the pytest plugin's report ------------------------
HOSTILE_MODEL = """
import torch
from torch import nn


class Pool(nn.Module):
    def forward(self, x):
        return torch.mode(x)[0]  # no MPS kernel in any release: a fallback


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.add_module("enc|dec", Pool())

    def forward(self, x):
        return getattr(self, "enc|dec")(x)
"""


def test_cli_step_summary_keeps_a_module_with_a_pipe(tmp_path: Path) -> None:
    script = tmp_path / "mod`el.py"
    script.write_text(HOSTILE_MODEL + '\nModel()(torch.randn(4, 8, device="mps"))\n')
    summary = tmp_path / "summary.md"
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    env["GITHUB_STEP_SUMMARY"] = str(summary)
    r = subprocess.run(
        [sys.executable, "-m", "fallback_probe", str(script), "--torch-version", "2.15.0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    for md in (r.stdout, summary.read_text()):
        rows = table_after(md, "## Fallbacks and unsupported ops")
        head = rows[0]
        mode = dict(zip(head, next(row for row in rows if row[0] == "aten::mode"), strict=True))
        assert mode["verdict"] == "fallback"
        assert mode["module"] == "enc|dec"
        line = (
            HOSTILE_MODEL.splitlines().index(
                "        return torch.mode(x)[0]  # no MPS kernel in any release: a fallback"
            )
            + 1
        )
        assert mode["source"] == f"mod`el.py:{line}"


def test_plugin_report_keeps_parametrized_ids_and_modules(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_hostile=HOSTILE_MODEL
        + """
import pytest


@pytest.mark.parametrize("v", ["a|b", "`tick`"])
def test_x(v):
    Model()(torch.randn(4, 8, device="mps"))
"""
    )
    result = pytester.runpytest_subprocess(
        "--fallback-probe", "--fallback-torch-version", "2.15.0", "--fallback-report", "r.md"
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # both tests are new to the baseline
    md = pytester.path.joinpath("r.md").read_text()
    parsed = gfm(md)
    assert not parsed.markup
    for heading in ("## Tests not in the baseline", "## Every fallback and unsupported op"):
        head, *rows = table_after(md, heading)
        assert all(len(r) == len(head) == 6 for r in [head, *rows])
        got = sorted((r[0], r[1], r[4]) for r in rows)
        assert got == [
            ("test_hostile.py::test_x[`tick`]", "aten::mode", "enc|dec"),
            ("test_hostile.py::test_x[a|b]", "aten::mode", "enc|dec"),
        ]
    (new,) = [p for p in parsed.paragraphs if p.startswith("New tests: ")]
    assert sorted(new.removeprefix("New tests: ").split(", ")) == [
        "test_hostile.py::test_x[`tick`]",
        "test_hostile.py::test_x[a|b]",
    ]
