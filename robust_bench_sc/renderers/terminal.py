"""A terminal's width: what ``scbench run`` prints of its ``summary.md``.

``summary.md`` is a document (markdown tables, one line per row however wide); a terminal
of 80 columns would wrap its table lines into a mess. :func:`fit_markdown` keeps every line
that fits as it is, so a wide terminal sees ``summary.md`` unchanged, and lays out each
table that does not fit as plain text within the width: cells wrap between words (a
``[lo, hi]`` interval stays whole, a label breaks after ``_`` or ``-``, never inside a
word), the table is transposed (threat models as rows) when that fits better, and split
into several tables repeating the row labels when no orientation fits at all. Prose wraps
between words.
"""

from __future__ import annotations

import re
import textwrap

from rich.cells import cell_len

GAP = "  "  # between two columns

#: the corner label of a transposed table, by the corner label of the markdown table
TRANSPOSED_CORNER = {"defense": "threat model"}

_VALUE_WORD = re.compile(r"\[[^\]]*\]\S*|\S+")  # a cell's words; an interval [lo, hi] is one word
_LABEL_PIECE = re.compile(r"[^_\-]*[_\-]+|[^_\-]+")  # a label word breaks after _ or -


def _words(text: str, label: bool) -> list[list[str]]:
    """The words of a cell, each as the pieces it may break between (a label's word breaks
    after ``_`` or ``-``; a value's word never)."""
    words = _VALUE_WORD.findall(text)
    return [_LABEL_PIECE.findall(w) if label else [w] for w in words]


def min_width(text: str, label: bool) -> int:
    """The narrowest column ``text`` wraps into without breaking a word (or a label's piece)."""
    return max((cell_len(p) for w in _words(text, label) for p in w), default=0)


def wrap_cell(text: str, width: int, label: bool = False) -> list[str]:
    """``text`` in lines of at most ``width`` cells, broken between words; a word that is
    wider breaks between its pieces (labels), and only a piece wider than ``width`` is cut."""
    lines: list[str] = []
    line = ""
    for pieces in _words(text, label):
        word = "".join(pieces)
        sep = " " if line else ""
        if cell_len(line + sep + word) <= width:
            line += sep + word
            continue
        if line and cell_len(word) <= width:
            lines.append(line)
            line = word
            continue
        for k, p in enumerate(pieces):  # too wide for a line of its own: break between its pieces
            sep = " " if line and k == 0 else ""
            if cell_len(line + sep + p) <= width:
                line += sep + p
                continue
            if line:
                lines.append(line)
            while cell_len(p) > width:  # a piece wider than the column: the only cut
                cut = _cut(p, width)
                lines.append(p[:cut])
                p = p[cut:]
            line = p
    return [*lines, line] if line or not lines else lines


def _cut(s: str, width: int) -> int:
    n = 0
    for i, ch in enumerate(s):
        n += cell_len(ch)
        if n > width:
            return max(i, 1)
    return len(s)


def _widths(columns: list[list[str]], width: int) -> list[int] | None:
    """Each column's width so the table fits ``width``: the natural widths when they fit,
    else each column's narrowest, widened in turn where a cell wants more; None when even
    the narrowest do not fit."""
    avail = width - cell_len(GAP) * (len(columns) - 1)
    natural = [max(cell_len(c) for c in col) for col in columns]
    if sum(natural) <= avail:
        return natural
    ws = [max(min_width(c, label=(i == 0 or j == 0)) for i, c in enumerate(col)) for j, col in enumerate(columns)]
    extra = avail - sum(ws)
    if extra < 0:
        return None
    while extra > 0 and any(w < n for w, n in zip(ws, natural)):
        for j in range(len(ws)):
            if extra and ws[j] < natural[j]:
                ws[j] += 1
                extra -= 1
    return ws


def _lay_out(header: list[str], rows: list[list[str]], ws: list[int]) -> list[str]:
    def block(cells: list[str], label_row: bool) -> list[str]:
        wrapped = [wrap_cell(c, w, label=label_row or j == 0) for j, (c, w) in enumerate(zip(cells, ws))]
        height = max(len(x) for x in wrapped)
        out = []
        for k in range(height):
            parts = [(x[k] if k < len(x) else "") for x in wrapped]
            out.append(GAP.join(p + " " * (w - cell_len(p)) for p, w in zip(parts, ws)).rstrip())
        return out

    head = block(header, True)
    body = [block(r, False) for r in rows]
    spaced = any(len(b) > 1 for b in body)  # a row of several lines: a blank line between rows
    lines = [*head, GAP.join("─" * w for w in ws)]
    for i, b in enumerate(body):
        lines += ([""] if spaced and i else []) + b
    return lines


def _transpose(header: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    corner = TRANSPOSED_CORNER.get(header[0], "")
    return ([corner, *(r[0] for r in rows)],
            [[h, *(r[j] for r in rows)] for j, h in enumerate(header) if j])


def _columns(header: list[str], rows: list[list[str]]) -> list[list[str]]:
    return [[header[j], *(r[j] for r in rows)] for j in range(len(header))]


def _groups(header: list[str], rows: list[list[str]], width: int) -> list[list[int]] | None:
    """The data columns in groups that each fit beside the row labels; None when one does not."""
    cols = _columns(header, rows)
    groups: list[list[int]] = []
    for j in range(1, len(header)):
        if groups and _widths([cols[0], *(cols[k] for k in groups[-1] + [j])], width) is not None:
            groups[-1].append(j)
        elif _widths([cols[0], cols[j]], width) is not None:
            groups.append([j])
        else:
            return None
    return groups


def fit_table(header: list[str], rows: list[list[str]], width: int) -> list[str]:
    """A table (``header`` and ``rows``; the first column labels the rows) as lines of at most
    ``width`` cells: as it is, one line per row, where that fits; else transposed where that
    fits on one line per row; else with cells wrapped, as it is or transposed; else split into
    groups of columns, each repeating the row labels."""
    t_header, t_rows = _transpose(header, rows)
    tries = [(header, rows), (t_header, t_rows)]
    for h, r in tries:  # one line per row
        ws = _widths(_columns(h, r), width)
        if ws is not None and ws == [max(cell_len(c) for c in col) for col in _columns(h, r)]:
            return _lay_out(h, r, ws)
    for h, r in tries:  # cells wrapped
        ws = _widths(_columns(h, r), width)
        if ws is not None:
            return _lay_out(h, r, ws)
    best: tuple[list[str], list[list[str]], list[list[int]]] | None = None
    for h, r in tries:
        g = _groups(h, r, width)
        if g is not None and (best is None or len(g) < len(best[2])):
            best = (h, r, g)
    if best is None:  # not even one column beside the row labels: each cell on its own line
        return [line for r in rows for j, c in enumerate(r)
                for line in wrap_cell(f"{header[j]}: {c}" if j else c, width, label=not j)]
    h, r, groups = best
    out: list[str] = []
    for group in groups:
        sub_h = [h[0], *(h[j] for j in group)]
        sub_r = [[row[0], *(row[j] for j in group)] for row in r]
        out += ([""] if out else []) + _lay_out(sub_h, sub_r, _widths(_columns(sub_h, sub_r), width) or [])
    return out


def _md_cells(line: str) -> list[str]:
    """The cells of a markdown table line (``\\|`` is a literal bar)."""
    inner = line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def fit_markdown(text: str, width: int) -> str:
    """``text`` (markdown, as ``summary.md``) for a terminal ``width`` cells wide: unchanged
    where it fits; a table that does not fit laid out by :func:`fit_table`; a longer line of
    prose wrapped between words."""
    lines = text.split("\n")
    if all(cell_len(ln) <= width for ln in lines):
        return text
    out: list[str] = []
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            table = lines[i:j]
            if all(cell_len(x) <= width for x in table):
                out += table
            else:
                rows = [_md_cells(x) for x in table if not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", x.strip())]
                out += fit_table(rows[0], rows[1:], width)
            i = j
            continue
        out += textwrap.wrap(ln, width, break_long_words=False, break_on_hyphens=False) if cell_len(ln) > width else [ln]
        i += 1
    return "\n".join(out)
