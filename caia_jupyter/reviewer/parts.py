"""federated.py split into its parts: the module docstring, the head before the first cell, and
each federated cell by its marker (CELL_MARK). The review shows the parts, the diff against an
approved bundle compares them, and the capability report numbers its findings by them.
"""

from __future__ import annotations

import io
import itertools
import tokenize
from typing import NamedTuple

from ..researcher.bundle import CELL_MARK


class ModulePart(NamedTuple):
    """A run of federated.py: kind "docstring", "head" (before the first cell) or "cell" (with its ordinal)."""

    kind: str
    text: str
    ordinal: int | None = None


def split_module(source: str) -> list[ModulePart]:
    """federated.py -> its parts in order; "".join(part.text for part in parts) == source.

    Python's tokenizer finds them, never a pattern over the text: the module docstring only
    when the file starts with a plain string statement alone on its lines (it takes the blank
    lines after it); a cell from each marker (CELL_MARK, e.g. "# ---- federated cell 3 ----")
    that is a comment alone on its line, at column 0, outside brackets, to the next; the head
    is what lies between. A source the tokenizer cannot read is one head part.

    Markers count only in sequence, as composing writes them: cell 1, then 2, 3, ...; a marker
    out of sequence (a repeated or skipped ordinal) stays text of the cell it stands in, so no
    two parts share an ordinal and no cell can pose as another (composing refuses a cell holding
    a marker line, so only a hand-made federated.py has one).
    """
    lines = io.StringIO(source).readlines()  # the lines the tokenizer reads
    starts = list(itertools.accumulate((len(line) for line in lines), initial=0))
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        tokens = []

    def start_of(row: int) -> int:  # offset where 1-based row begins
        return starts[min(row, len(lines) + 1) - 1]

    bounds = [(0, "head", None)]
    docstring_rows = _docstring_rows(tokens)
    if docstring_rows:
        bounds = [(0, "docstring", None), (start_of(docstring_rows + 1), "head", None)]
    depth, expected = 0, 1  # expected: the ordinal of the next cell marker
    for token in tokens:
        if token.type == tokenize.OP and token.string in ("(", "[", "{"):
            depth += 1
        elif token.type == tokenize.OP and token.string in (")", "]", "}"):
            depth -= 1
        elif token.type == tokenize.COMMENT and depth == 0 and token.start[1] == 0 and token.line.rstrip("\r\n") == token.string:
            ordinal = _marker_ordinal(token.string)
            if ordinal == expected:
                bounds.append((start_of(token.start[0]), "cell", ordinal))
                expected += 1
    bounds.append((len(source), "", None))
    return [
        ModulePart(kind, source[begin:end], ordinal)
        for (begin, kind, ordinal), (end, _, _) in itertools.pairwise(bounds)
        if end > begin
    ]


def _docstring_rows(tokens: list[tokenize.TokenInfo]) -> int | None:
    """Last row of the module docstring and the blank lines after it, or None if there is none."""
    if len(tokens) < 2:
        return None
    first, second = tokens[0], tokens[1]
    prefix = first.string[: len(first.string) - len(first.string.lstrip("rRuUbBfF"))]
    if first.type != tokenize.STRING or first.start != (1, 0) or set(prefix.lower()) & {"b", "f"}:
        return None
    if second.type != tokenize.NEWLINE:  # `"""doc"""; import os`, `"""doc""" + x`, `"""doc"""  # note`
        return None
    last = second.start[0]
    for token in tokens[2:]:
        if token.type != tokenize.NL or token.line.strip():
            break
        last = token.start[0]
    return last


def _marker_ordinal(comment: str) -> int | None:
    before, after = CELL_MARK.split("{}")
    number = comment[len(before):len(comment) - len(after)]
    if comment.startswith(before) and comment.endswith(after) and number.isascii() and number.isdigit() and number[0] != "0":
        return int(number)
    return None
