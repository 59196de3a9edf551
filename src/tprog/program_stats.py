"""What a program's header and results report about its size: code lines and live modules."""

from __future__ import annotations

import ast
import io
import tokenize
from collections import Counter

from tprog import ir
from tprog.codegen_template import RUNTIME_BANNER

_NOT_CODE = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENDMARKER,
}
_KINDS = {
    ir.CatAttention: "categorical heads",
    ir.NumAttention: "numerical heads",
    ir.CatMLP: "categorical MLPs",
    ir.NumMLP: "numerical MLPs",
}


def code_lines(source: str) -> int:
    """Lines of ``source`` holding code: not blank, not only a comment, not in a docstring."""
    docstring_lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and _is_docstring(body[0]):
            docstring_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines = {
        line
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type not in _NOT_CODE
        for line in range(token.start[0], token.end[0] + 1)
    }
    return len(lines - docstring_lines)


def learned_lines(source: str) -> int:
    """Code lines of a generated program's own part: program(), its predicates and tables,
    without the imports and the lines that load the runtime."""
    start = source.index("\ndef program(")
    end = source.index(RUNTIME_BANNER)
    return code_lines(source[start:end])


def _is_docstring(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def module_counts(program: ir.Program) -> dict[str, int]:
    """Modules per kind, e.g. ``{"categorical heads": 4, ...}`` (every kind listed)."""
    counts = Counter(_KINDS[type(module)] for module in program.modules)
    return {kind: counts[kind] for kind in _KINDS.values()}
