"""service.admin.dashboard.charts: pure functions from numbers to inline SVG."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.admin.dashboard import charts

SVG = "{http://www.w3.org/2000/svg}"


def parse(markup: str) -> ET.Element:
    return ET.fromstring(str(markup))  # noqa: S314 - our own output


def rects(svg: ET.Element) -> list[ET.Element]:
    """The data bars (legend swatches have no <title>)."""
    return [r for r in svg.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]


@pytest.mark.parametrize(
    ("peak", "expected"),
    [
        (0, [0, 1]),
        (1, [0, 1]),
        (3, [0, 1, 2, 3]),
        (5, [0, 2, 4, 6]),
        (7, [0, 2, 4, 6, 8]),
        (10, [0, 5, 10]),
        (24, [0, 10, 20, 30]),
        (101, [0, 50, 100, 150]),
        (1200, [0, 500, 1000, 1500]),
    ],
)
def test_ticks_are_whole_numbers_in_steps_of_1_2_or_5(peak: int, expected: list[int]) -> None:
    assert charts.ticks(peak) == expected


@given(st.integers(0, 10**9))
def test_ticks_cover_the_peak_in_at_most_four_equal_whole_steps(peak: int) -> None:
    axis = charts.ticks(peak)
    assert axis[0] == 0 and axis[-1] >= peak and 2 <= len(axis) <= 5
    assert all(isinstance(v, int) for v in axis)
    assert len({b - a for a, b in itertools.pairwise(axis)}) == 1


def test_a_small_count_gets_no_fractional_tick_labels() -> None:
    svg = parse(charts.columns("c", "t", ["0h", "1h"], [charts.Series("Opens", [1, 0])]))
    numbers = [t.text for t in svg.iter(f"{SVG}text") if t.text and t.text[0].isdigit()]
    assert "0.25" not in numbers and "0.5" not in numbers
    assert {"0", "1"} <= set(numbers)


def test_columns_chart_is_responsive_accessible_svg() -> None:
    svg = parse(
        charts.columns(
            "opens",
            "Opens by hour",
            ["0h", "1h"],
            [
                charts.Series("Opens by people", [3, 1], singular="Open by a person"),
                charts.Series("Machine opens", [2, 0], singular="Machine open"),
            ],
            unit="opens",
        )
    )
    assert svg.get("viewBox") == "0 0 360 220"
    assert svg.get("width") is None and svg.get("height") is None  # CSS sizes it
    assert svg.get("role") == "img"
    assert svg.get("aria-labelledby") == "opens-title opens-desc"
    assert svg.find(f"{SVG}title").text == "Opens by hour"
    assert svg.find(f"{SVG}title").get("id") == "opens-title"
    desc = svg.find(f"{SVG}desc").text
    assert desc == "In total 4 opens by people, 2 machine opens. Most at 0h with 5 opens."
    tips = [r.find(f"{SVG}title").text for r in rects(svg)]
    # Zero bars are omitted; one is singular.
    assert tips == ["0h: 3 opens by people", "0h: 2 machine opens", "1h: 1 open by a person"]


def test_one_of_anything_is_singular_in_the_sentences() -> None:
    svg = parse(
        charts.columns(
            "c", "t", ["a"], [charts.Series("Sign-ups", [1], singular="Sign-up")], unit="events"
        )
    )
    assert svg.find(f"{SVG}desc").text == "In total 1 sign-up. Most at a with 1 event."
    bars = parse(charts.bars("b", "t", [("FR", 1)], unit="opens"))
    assert bars.find(f"{SVG}desc").text == "1 entry, 1 open in total; most: FR with 1."


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
    assert float(upper.get("height")) == pytest.approx(1.5 * float(lower.get("height")), rel=1e-3)
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


def test_long_axes_label_what_fits_and_always_the_last_position() -> None:
    labels = [f"11-{day:02d}" for day in range(1, 31)]
    svg = parse(charts.columns("c", "t", labels, [charts.Series("x", [1] * 30)]))
    shown = [t for t in svg.iter(f"{SVG}text") if t.text in labels]
    assert 3 <= len(shown) < 30
    assert shown[-1].text == "11-30"  # today is labelled
    xs = [float(t.get("x")) for t in shown]
    room = min(b - a for a, b in itertools.pairwise(xs))
    assert room >= 5 * charts.FONT * charts.CHAR_WIDTH  # labels of 5 characters never overlap


def test_every_label_is_shown_when_there_is_room() -> None:
    svg = parse(charts.columns("c", "t", ["0h", "1h", "2h"], [charts.Series("x", [1, 2, 3])]))
    assert [t.text for t in svg.iter(f"{SVG}text") if t.text.endswith("h")] == ["0h", "1h", "2h"]


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
    assert "A mail client wi…" in texts and "5" in texts
    widths = [float(r.get("width")) for r in rects(svg)]
    assert widths[0] > widths[1] == widths[2]
    assert svg.get("viewBox") == "0 0 360 78"  # grows with the rows


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


def test_a_lone_column_keeps_a_column_width() -> None:
    svg = parse(
        charts.columns("c", "t", ["0h"], [charts.Series("x", [1]), charts.Series("y", [2])])
    )
    assert all(float(r.get("width")) <= charts.BAR_MAX for r in rects(svg))
