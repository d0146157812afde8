"""Read the dtype expectations of ``torch/testing/_internal/common_mps.py`` with ``ast``.

PyTorch's own MPS test suite lists, per OpInfo name, the dtypes it expects to fail or skip
(mps-facts §6). Later verdicts use them to flag dtype-level gaps an op-level status cannot
show. The module imports test-only code and probes the machine, so it is never imported or
executed: only literal dict/set assignments to ALL-CAPS names are read.

Result: ``{"<function>.<NAME>": {"<opinfo name>": [dtype, ...] | None}}``; ``None`` means
every dtype (or, for a set, simply "listed"). A ``NAME.update({...})`` call is kept as its own
table ``"<function>.<NAME> if <condition>"`` when it sits under an ``if``, since conditions
(macOS version, sparse) are not evaluated here. Values that are not literal dtype lists are
kept as their source text.
"""

from __future__ import annotations

import ast

Table = dict[str, "list[str] | str | None"]


def extract(source: str) -> dict[str, Table]:
    """All expectation tables of one common_mps.py source, keyed and sorted deterministically."""
    tree = ast.parse(source)
    tables: dict[str, Table] = {}
    _walk(tree.body, "", "", tables, seen_functions=set())
    return {name: dict(sorted(rows.items())) for name, rows in sorted(tables.items())}


def _walk(
    body: list[ast.stmt],
    scope: str,
    condition: str,
    out: dict[str, Table],
    seen_functions: set[str],
) -> None:
    for node in body:
        if isinstance(node, ast.FunctionDef):
            qualified = f"{scope}.{node.name}" if scope else node.name
            if qualified in seen_functions:
                continue  # the stub re-definitions for machines without MPS
            seen_functions.add(qualified)
            _walk(node.body, qualified, "", out, seen_functions)
        elif isinstance(node, ast.If):
            if not scope:  # module level: "if torch.backends.mps.is_available():"
                _walk(node.body, scope, condition, out, seen_functions)
                _walk(node.orelse, scope, condition, out, seen_functions)
                continue
            test = ast.unparse(node.test)
            inner = f"{condition} and {test}" if condition else test
            _walk(node.body, scope, inner, out, seen_functions)
            _walk(node.orelse, scope, f"not ({inner})", out, seen_functions)
        elif isinstance(node, (ast.For, ast.While, ast.With, ast.Try)):
            continue  # decorator application loops: no expectation literals
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            _assignment(node, scope, condition, out)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            _update(node.value, scope, condition, out)


def _assignment(
    node: ast.Assign | ast.AnnAssign, scope: str, condition: str, out: dict[str, Table]
) -> None:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    if node.value is None or not isinstance(node.value, (ast.Dict, ast.Set)):
        return
    for target in targets:
        if isinstance(target, ast.Name) and target.id.isupper():
            name = _table_name(scope, target.id, condition)
            out[name] = _literal(node.value)


def _update(call: ast.Call, scope: str, condition: str, out: dict[str, Table]) -> None:
    func = call.func
    if not (
        isinstance(func, ast.Attribute)
        and func.attr == "update"
        and isinstance(func.value, ast.Name)
        and func.value.id.isupper()
        and len(call.args) == 1
        and isinstance(call.args[0], ast.Dict)
    ):
        return
    name = _table_name(scope, func.value.id, condition)
    out.setdefault(name, {}).update(_literal(call.args[0]))


def _table_name(scope: str, name: str, condition: str) -> str:
    base = f"{scope}.{name}" if scope else name
    return f"{base} if {condition}" if condition else base


def _literal(node: ast.Dict | ast.Set) -> Table:
    rows: Table = {}
    if isinstance(node, ast.Set):
        for element in node.elts:
            rows[_key(element)] = None
        return rows
    for key, value in zip(node.keys, node.values, strict=True):
        if key is None:  # "**other" splat
            rows["**" + ast.unparse(value)] = None
            continue
        rows[_key(key)] = _dtypes(value)
    return rows


def _key(node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return ast.unparse(node)


def _dtypes(node: ast.expr) -> list[str] | str | None:
    if isinstance(node, ast.Constant) and node.value is None:
        return None
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        names = [_dtype_name(element) for element in node.elts]
        if all(name is not None for name in names):
            return sorted(set(names))  # type: ignore[arg-type]
    return ast.unparse(node)


def _dtype_name(node: ast.expr) -> str | None:
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "torch"
    ):
        return node.attr
    return None
