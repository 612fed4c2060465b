"""service.charts: pure functions from numbers to inline SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service import charts

SVG = "{http://www.w3.org/2000/svg}"


def parse(markup: str) -> ET.Element:
    return ET.fromstring(str(markup))  # noqa: S314 - our own output


def rects(svg: ET.Element) -> list[ET.Element]:
    """The data bars (legend swatches have no <title>)."""
    return [r for r in svg.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 1), (0.4, 1), (1, 1), (3, 5), (7, 10), (10, 10), (12, 20), (24, 25), (101, 200)],
)
def test_nice_max_rounds_up_to_a_readable_axis_top(value: float, expected: float) -> None:
    assert charts.nice_max(value) == expected


def test_ticks_split_the_axis_evenly_from_zero() -> None:
    assert charts.ticks(7) == [0, 2.5, 5, 7.5, 10]


def test_columns_chart_is_responsive_accessible_svg() -> None:
    svg = parse(
        charts.columns(
            "opens",
            "Opens by hour",
            ["0h", "1h"],
            [charts.Series("People", [3, 1]), charts.Series("Machines", [2, 0])],
            unit="opens",
        )
    )
    assert svg.get("viewBox") == "0 0 400 220"
    assert svg.get("width") is None and svg.get("height") is None  # CSS sizes it
    assert svg.get("role") == "img"
    assert svg.get("aria-labelledby") == "opens-title opens-desc"
    assert svg.find(f"{SVG}title").text == "Opens by hour"
    assert svg.find(f"{SVG}title").get("id") == "opens-title"
    desc = svg.find(f"{SVG}desc").text
    assert desc == "In total 4 people, 2 machines. Most at 0h with 5 opens."
    tips = [r.find(f"{SVG}title").text for r in rects(svg)]
    assert tips == ["0h: 3 people", "0h: 2 machines", "1h: 1 people"]  # zero bars are omitted


def test_stacked_columns_sit_on_top_of_each_other() -> None:
    svg = parse(
        charts.columns(
            "c", "t", ["a"], [charts.Series("x", [2]), charts.Series("y", [3])], stacked=True
        )
    )
    lower, upper = rects(svg)
    assert float(upper.get("y")) + float(upper.get("height")) == pytest.approx(
        float(lower.get("y"))
    )
    assert float(upper.get("height")) == pytest.approx(1.5 * float(lower.get("height")))
    assert lower.get("x") == upper.get("x")


def test_grouped_columns_stand_side_by_side_on_the_baseline() -> None:
    svg = parse(
        charts.columns(
            "c", "t", ["a"], [charts.Series("x", [2]), charts.Series("y", [4])], stacked=False
        )
    )
    left, right = rects(svg)
    assert float(left.get("x")) < float(right.get("x"))
    bottoms = {float(r.get("y")) + float(r.get("height")) for r in (left, right)}
    assert len({round(b, 1) for b in bottoms}) == 1


def test_series_are_coloured_from_the_palette_unless_given() -> None:
    svg = parse(
        charts.columns(
            "c", "t", ["a"], [charts.Series("x", [1]), charts.Series("y", [1], "#123456")]
        )
    )
    assert [r.get("fill") for r in rects(svg)] == [charts.PALETTE[0], "#123456"]


def test_long_axes_label_at_most_ten_positions() -> None:
    labels = [f"d{i}" for i in range(30)]
    svg = parse(charts.columns("c", "t", labels, [charts.Series("x", [1] * 30)]))
    shown = [t.text for t in svg.iter(f"{SVG}text") if t.text in labels]
    assert 1 < len(shown) <= charts.MAX_X_LABELS


def test_empty_charts_say_so() -> None:
    assert "No data yet" in charts.columns("c", "Nothing", [], [charts.Series("x", [])])
    assert "No data yet" in charts.bars("b", "Nothing", [])
    assert parse(charts.bars("b", "Nothing", [])).find(f"{SVG}desc").text == "No data yet."


def test_all_zero_data_draws_an_axis_and_no_bars() -> None:
    svg = parse(charts.columns("c", "t", ["a", "b"], [charts.Series("x", [0, 0])]))
    assert rects(svg) == []
    assert svg.find(f"{SVG}desc").text == "In total 0 x."


def test_series_length_must_match_the_labels() -> None:
    with pytest.raises(ValueError, match="2 values for 3 labels"):
        charts.columns("c", "t", ["a", "b", "c"], [charts.Series("x", [1, 2])])


def test_text_is_escaped() -> None:
    evil = '<script>alert(1)</script>"&'
    markup = str(
        charts.columns(evil, evil, [evil], [charts.Series(evil, [1])])
        + charts.bars("b", evil, [(evil, 2)])
    )
    assert "<script>" not in markup
    parse(charts.columns(evil, evil, [evil], [charts.Series(evil, [1])]))  # well-formed


def test_bars_put_the_largest_first_with_values_and_truncated_labels() -> None:
    svg = parse(
        charts.bars(
            "clients",
            "Opens by mail client",
            [("Thunderbird", 2), ("A mail client with a very long name", 5), ("Outlook", 2)],
            unit="opens",
        )
    )
    tips = [r.find(f"{SVG}title").text for r in rects(svg)]
    assert tips == [
        "A mail client with a very long name: 5 opens",
        "Outlook: 2 opens",
        "Thunderbird: 2 opens",
    ]
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    assert "A mail client with …" in texts and "5" in texts
    widths = [float(r.get("width")) for r in rects(svg)]
    assert widths[0] > widths[1] == widths[2]
    assert svg.get("viewBox") == "0 0 400 72"  # grows with the rows


@given(
    values=st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), min_size=1, max_size=60
    ),
    stacked=st.booleans(),
)
def test_every_bar_stays_inside_the_plot(values: list[tuple[int, int]], stacked: bool) -> None:
    labels = [str(i) for i in range(len(values))]
    svg = parse(
        charts.columns(
            "c",
            "t",
            labels,
            [
                charts.Series("a", [v[0] for v in values]),
                charts.Series("b", [v[1] for v in values]),
            ],
            stacked=stacked,
        )
    )
    for rect in rects(svg):
        x, y = float(rect.get("x")), float(rect.get("y"))
        w, h = float(rect.get("width")), float(rect.get("height"))
        assert 0 <= x and x + w <= charts.WIDTH + 0.01
        assert 0 <= y and y + h <= 220 + 0.01
