"""Result tables: exact layout, percent cells, missing metrics, column choice."""

from __future__ import annotations

from saga.eval.report import format_markdown_table, format_table

ROWS = {
    "proxy_anchor": {"R@1": 0.6543, "MAP@R": 0.25, "NMI": 0.7},
    "saga": {"R@1": 0.71049, "MAP@R": 1.0},
}


def test_plain_table_layout():
    # 0.6543 -> 65.4, 0.71049 -> 71.0, 1.0 -> 100.0; saga has no NMI -> "-".
    assert format_table(ROWS) == (
        "method         R@1  MAP@R   NMI\n"
        "proxy_anchor  65.4   25.0  70.0\n"
        "saga          71.0  100.0     -"
    )


def test_keys_choose_and_order_columns():
    assert format_table(ROWS, keys=["NMI", "R@1"]).splitlines() == [
        "method         NMI   R@1",
        "proxy_anchor  70.0  65.4",
        "saga             -  71.0",
    ]


def test_markdown_table():
    assert format_markdown_table(ROWS, keys=["R@1", "NMI"]) == (
        "| method | R@1 | NMI |\n"
        "|---|---:|---:|\n"
        "| proxy_anchor | 65.4 | 70.0 |\n"
        "| saga | 71.0 | - |"
    )
