"""Charts as inline SVG, rendered on the server: no script, no CDN, allowed by a strict CSP.

Pure functions from numbers to markup. Every chart has a `viewBox` and no fixed size,
so CSS scales it to the width of its column; the viewBox is narrow (360 units) and the
stylesheet caps a chart at 30rem, so its 13-unit text shows at about 12.5 px on a
390 px phone and 17 px on a desktop. Everything charted is a count: axis ticks are
whole numbers.
Each chart carries `<title>`/`<desc>` for screen readers and a `<title>` per bar for
pointer users; the page shows the same numbers as a table beside it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 360
FONT = 13
CHAR_WIDTH = 0.58  # of FONT: a generous average advance for system-ui digits and letters
BAR_MAX = 40.0  # a lone column stays a column, not a wall
# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00")


@dataclass(frozen=True)
class Series:
    """One coloured series; `singular` names one item ("1 sign-up"), default `name`."""

    name: str
    values: Sequence[float]
    color: str = ""
    singular: str = ""

    def count(self, value: float) -> str:
        """ "3 sign-ups", "1 sign-up" (lower case, for sentences and tooltips)."""
        word = self.singular if value == 1 and self.singular else self.name
        return f"{_num(value)} {word.lower()}"


def ticks(maximum: float, count: int = 4) -> list[int]:
    """Whole-number axis values from 0 past `maximum`, at most `count` steps of 1, 2 or
    5 times a power of ten (counts: never 1.25 opens)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            size = step * factor
            if size * count >= maximum:
                top = max(size, math.ceil(maximum / size) * size)
                return list(range(0, top + 1, size))
        step *= 10


def _num(value: float) -> str:
    """Numbers as people read them: 3, 2.5, 1200 (never 3.0)."""
    return f"{value:g}" if value != int(value) else str(int(value))


def _f(value: float) -> str:
    """Coordinates with two decimals at most, to keep the markup small."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _markup(parts: list[str]) -> Markup:
    # Every piece of text in `parts` went through escape(); the rest are numbers.
    return Markup("".join(parts))  # noqa: S704


def _open(chart_id: str, title: str, description: str, height: float) -> list[str]:
    cid = escape(chart_id)
    return [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {_f(height)}" role="img" '
        f'aria-labelledby="{cid}-title {cid}-desc" xmlns="http://www.w3.org/2000/svg" '
        f'font-size="{FONT}" font-family="system-ui, sans-serif">',
        f'<title id="{cid}-title">{escape(title)}</title>',
        f'<desc id="{cid}-desc">{escape(description)}</desc>',
    ]


def _empty(parts: list[str], height: float) -> Markup:
    parts.append(
        f'<text x="{WIDTH / 2}" y="{_f(height / 2)}" text-anchor="middle" fill="#555">'
        "No data yet</text></svg>"
    )
    return _markup(parts)


def _text_width(text: str) -> float:
    return len(text) * FONT * CHAR_WIDTH


def _legend(series: Sequence[Series], y: float) -> list[str]:
    out = []
    x = 4.0
    for s in series:
        out.append(
            f'<rect x="{_f(x)}" y="{_f(y - 10)}" width="11" height="11" fill="{s.color}"/>'
            f'<text x="{_f(x + 15)}" y="{_f(y)}">{escape(s.name)}</text>'
        )
        x += 15 + _text_width(s.name) + 14
    return out


def labelled(labels: Sequence[str], band: float) -> set[int]:
    """Which x positions get their label: as many as fit side by side, counted back from
    the last (today, the latest hour), so the newest position is always labelled."""
    widest = max((_text_width(label) for label in labels), default=0)
    every = max(1, math.ceil((widest + FONT * 0.6) / band))
    last = len(labels) - 1
    return {i for i in range(len(labels)) if (last - i) % every == 0}


def _colored(series: Sequence[Series]) -> list[Series]:
    return [
        dataclasses.replace(s, values=list(s.values), color=s.color or PALETTE[i % len(PALETTE)])
        for i, s in enumerate(series)
    ]


def _units(value: float, unit: str) -> str:
    """ "5 opens", "1 open"."""
    if value == 1 and unit.endswith("s"):
        unit = unit[:-1]
    return f"{_num(value)} {unit}".rstrip()


def summary(labels: Sequence[str], series: Sequence[Series], unit: str) -> str:
    """A sentence for screen readers: totals per series and the busiest label."""
    if not labels or not series:
        return "No data yet."
    totals = [sum(s.values) for s in series]
    parts = [s.count(t) for s, t in zip(series, totals, strict=True)]
    per_label = [sum(s.values[i] for s in series) for i in range(len(labels))]
    peak = max(range(len(labels)), key=lambda i: per_label[i])
    sentence = f"In total {', '.join(parts)}."
    if per_label[peak] > 0:
        sentence += f" Most at {labels[peak]} with {_units(per_label[peak], unit)}."
    return sentence


def columns(
    chart_id: str,
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    stacked: bool = True,
    unit: str = "",
    height: float = 220,
) -> Markup:
    """Vertical bars, one band per label; series stacked or side by side."""
    series = _colored(series)
    for s in series:
        if len(s.values) != len(labels):
            raise ValueError(
                f"series {s.name!r} has {len(s.values)} values for {len(labels)} labels"
            )
    parts = _open(chart_id, title, summary(labels, series, unit), height)
    if not labels:
        return _empty(parts, height)

    per_label = [[s.values[i] for s in series] for i in range(len(labels))]
    axis = ticks(max(((sum if stacked else max)(v) for v in per_label if v), default=0))
    left = max(_text_width(_num(v)) for v in axis) + 8
    right = min(30.0, max(6.0, _text_width(labels[-1]) / 2))
    top, bottom = 26.0, 24.0
    plot_w, plot_h = WIDTH - left - right, height - top - bottom
    scale = plot_h / axis[-1]

    parts += _legend(series, 13)
    for value in axis:
        y = top + plot_h - value * scale
        parts.append(
            f'<line x1="{_f(left)}" x2="{_f(WIDTH - right)}" y1="{_f(y)}" y2="{_f(y)}" '
            f'stroke="#ddd"/><text x="{_f(left - 4)}" y="{_f(y + 4)}" text-anchor="end" '
            f'fill="#444">{_num(value)}</text>'
        )

    band = plot_w / len(labels)
    shown = labelled(labels, band)
    for i, label in enumerate(labels):
        x0 = left + i * band
        if stacked:
            width, base = min(band * 0.8, BAR_MAX), top + plot_h
            for s in series:
                h = s.values[i] * scale
                if h > 0:
                    base -= h
                    parts.append(_bar(x0 + (band - width) / 2, base, width, h, s, label, i))
        else:
            width = min(band * 0.84, BAR_MAX) / len(series)
            for k, s in enumerate(series):
                h = s.values[i] * scale
                if h > 0:
                    x = x0 + (band - width * len(series)) / 2 + k * width
                    parts.append(_bar(x, top + plot_h - h, width, h, s, label, i))
        if i in shown:
            parts.append(
                f'<text x="{_f(x0 + band / 2)}" y="{_f(height - bottom + 16)}" '
                f'text-anchor="middle" fill="#444">{escape(label)}</text>'
            )
    parts.append(
        f'<line x1="{_f(left)}" x2="{_f(WIDTH - right)}" y1="{_f(top + plot_h)}" '
        f'y2="{_f(top + plot_h)}" stroke="#888"/></svg>'
    )
    return _markup(parts)


def _bar(x: float, y: float, w: float, h: float, s: Series, label: str, i: int) -> str:
    tip = f"{label}: {s.count(s.values[i])}"
    return (
        f'<rect x="{_f(x)}" y="{_f(y)}" width="{_f(max(w, 0.5))}" height="{_f(h)}" '
        f'fill="{s.color}"><title>{escape(tip)}</title></rect>'
    )


def bars(
    chart_id: str,
    title: str,
    items: Sequence[tuple[str, float]],
    *,
    unit: str = "",
    color: str = PALETTE[0],
) -> Markup:
    """Horizontal bars, one row per item, largest first (for countries, mail clients)."""
    items = sorted(items, key=lambda item: (-item[1], item[0]))
    row, top, label_w = 22.0, 6.0, 118.0
    height = top * 2 + max(len(items), 1) * row
    total = sum(value for _, value in items)
    description = (
        "No data yet."
        if not items
        else f"{len(items)} {'entry' if len(items) == 1 else 'entries'}, {_units(total, unit)} "
        f"in total; most: {items[0][0]} with {_num(items[0][1])}."
    )
    parts = _open(chart_id, title, description, height)
    if not items:
        return _empty(parts, height)
    value_w = 44.0
    plot_w = WIDTH - label_w - value_w
    top_value = max(value for _, value in items) or 1
    for i, (label, value) in enumerate(items):
        y = top + i * row
        w = plot_w * value / top_value
        text = label if len(label) <= 17 else label[:16] + "…"
        parts.append(
            f'<text x="{_f(label_w - 6)}" y="{_f(y + 15)}" text-anchor="end" fill="#222">'
            f"{escape(text)}</text>"
            f'<rect x="{_f(label_w)}" y="{_f(y + 3)}" width="{_f(max(w, 0.5))}" '
            f'height="{_f(row - 6)}" fill="{color}"><title>'
            f"{escape(f'{label}: {_units(value, unit)}')}</title></rect>"
            f'<text x="{_f(label_w + w + 4)}" y="{_f(y + 15)}" fill="#222">{_num(value)}</text>'
        )
    parts.append("</svg>")
    return _markup(parts)
