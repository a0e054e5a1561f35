"""Query answers as plain text for a terminal: any table (``abs-eval sql run``) and a run's accuracy.

Why apart from the queries (``catalog``) and the files (``export``): what fits a terminal is a
question of columns and widths, not of SQL; the numbers stay whole in ``--out`` files, and these
functions only decide how many digits and columns a person sees.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

__all__ = ["format_accuracy", "format_table"]


def _cell(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return "NaN" if v != v else f"{v:.4f}"
    if isinstance(v, (list, tuple)):
        text = "[" + ", ".join(_cell(x) for x in v[:6]) + (", ..." if len(v) > 6 else "") + "]"
        return text
    if hasattr(v, "strftime"):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    return str(v)


def format_table(table: pa.Table, max_rows: int = 50, width: int | None = None) -> str:
    """A plain text table of ``table`` that fits ``width`` columns (default: the terminal's).

    Columns are kept from the left, so queries put what matters first (method,
    accuracy, interval, n); columns that do not fit are named in a last line instead
    of being cut in the middle. Floats show 4 decimals; ``--out`` writes them whole.
    """
    import shutil

    width = width or shutil.get_terminal_size((100, 24)).columns
    names = table.column_names
    rows = table.slice(0, max_rows).to_pylist()
    cells = [[_cell(r[n]) for n in names] for r in rows]
    widths = [min(40, max([len(n)] + [len(c[i]) for c in cells])) for i, n in enumerate(names)]
    kept: list[int] = []
    used = 0
    for i, w in enumerate(widths):
        if kept and used + w + 2 > width:
            break
        kept.append(i)
        used += w + 2

    def fmt_row(values: list[str]) -> str:
        out = []
        for i in kept:
            v = values[i] if len(values[i]) <= widths[i] else values[i][: widths[i] - 1] + "~"
            numeric = table.schema.field(i).type in (pa.float32(), pa.float64()) or pa.types.is_integer(
                table.schema.field(i).type
            )
            out.append(v.rjust(widths[i]) if numeric else v.ljust(widths[i]))
        return "  ".join(out).rstrip()

    lines = [fmt_row(names), "  ".join("-" * widths[i] for i in kept)]
    lines += [fmt_row(c) for c in cells]
    if not rows:
        lines.append("(no rows)")
    if table.num_rows > max_rows:
        lines.append(f"({table.num_rows} rows, first {max_rows} shown)")
    hidden = [names[i] for i in range(len(names)) if i not in kept]
    if hidden:
        lines.append(f"(not shown at {width} columns: {', '.join(hidden)}; use --out FILE or a wider terminal)")
    return "\n".join(lines) + "\n"


def format_accuracy(rows: list[dict[str, Any]]) -> str:
    """The accuracy rows of one run as method, accuracy, 95% interval, n, errors: under 60 columns."""
    lines = [f"{'method':<8} {'accuracy':>8}  {'95% CI':<17} {'n':>7} {'errors':>7}"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        acc = "-" if r.get("accuracy") is None else f"{r['accuracy']:.4f}"
        ci = "" if r.get("ci_low") is None else f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]"
        lines.append(f"{r['method']:<8} {acc:>8}  {ci:<17} {r['n']:>7} {r['n_error']:>7}")
    if not rows:
        lines.append("(no prediction rows for this run)")
    return "\n".join(lines) + "\n"
