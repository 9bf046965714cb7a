"""Result tables: one row per method, one column per metric, for terminals (plain text) and READMEs (Markdown).

Every metric is shown as a percentage with one decimal (0.7345 -> 73.5), NMI included, as in the metric-learning
papers' tables (Recall@K, NMI and MAP@R all in percent), so one table reads in one unit. A metric a row lacks is "-".
"""

from __future__ import annotations

from collections.abc import Sequence


def _columns(rows: dict[str, dict[str, float]], keys: Sequence[str] | None) -> list[str]:
    """The given keys, else every metric in order of first appearance over the rows."""
    if keys is not None:
        return list(keys)
    return list(dict.fromkeys(key for metrics in rows.values() for key in metrics))


def _cell(metrics: dict[str, float], key: str) -> str:
    return f"{100 * metrics[key]:.1f}" if key in metrics else "-"


def format_table(rows: dict[str, dict[str, float]], keys: Sequence[str] | None = None) -> str:
    """Aligned plain-text table: method names left-aligned, metrics (in percent) right-aligned."""
    columns = _columns(rows, keys)
    header = ["method", *columns]
    body = [[name, *(_cell(metrics, key) for key in columns)] for name, metrics in rows.items()]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))])

    return "\n".join(line(cells) for cells in [header, *body])


def format_markdown_table(rows: dict[str, dict[str, float]], keys: Sequence[str] | None = None) -> str:
    """GitHub Markdown table with the same cells as ``format_table`` (metric columns right-aligned)."""
    columns = _columns(rows, keys)
    lines = ["| " + " | ".join(["method", *columns]) + " |", "|---|" + "---:|" * len(columns)]
    lines += ["| " + " | ".join([name, *(_cell(metrics, key) for key in columns)]) + " |"
              for name, metrics in rows.items()]
    return "\n".join(lines)
