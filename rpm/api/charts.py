"""Vital-sign charts rendered on the server as SVG with matplotlib (no script in the page).

One chart per metric: each component that shares the metric's first unit is a line (blood
pressure: systolic and diastolic; the cuff's pulse is in the readings table), and the
limits of the patient's threshold rules are drawn as dashed lines, labelled.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from rpm.domain import DISPLAY_UNITS, METRICS, Metric
from rpm.storage.readings import NO_READINGS, ChartSummary
from rpm.storage.rollups import Bucket
from rules.spec import RuleSpec

METRIC_TITLES: Mapping[Metric, str] = {
    Metric.BLOOD_PRESSURE: "Blood pressure",
    Metric.HEART_RATE: "Heart rate",
    Metric.SPO2: "Oxygen saturation (SpO2)",
    Metric.WEIGHT: "Weight",
    Metric.BODY_TEMPERATURE: "Body temperature",
    Metric.GLUCOSE: "Glucose",
    Metric.RESPIRATORY_RATE: "Respiratory rate",
}
# Okabe-Ito colours (distinguishable with colour-vision deficiencies), and a marker and line
# style per series so colour is never the only difference.
_SERIES_STYLES = (("#0072B2", "o", "-"), ("#D55E00", "s", "--"), ("#009E73", "^", ":"))
_THRESHOLD_COLOUR = "#6b1d1d"
_TEXT_COLOUR = "#1a1a1a"
# Matplotlib's rcParams are global: one render at a time (each takes a few milliseconds).
_render_lock = threading.Lock()
_HOUR = timedelta(hours=1)
_NOON = timedelta(hours=12)


@dataclass(frozen=True, slots=True)
class Threshold:
    component: str
    value: float
    label: str


Point = tuple[datetime, Mapping[str, float]]


def charted_components(metric: Metric) -> tuple[str, ...]:
    """The components drawn for ``metric``: those in the unit of its first component."""
    spec = METRICS[metric]
    unit = spec.components[0].ucum
    return tuple(c.name for c in spec.components if c.ucum == unit)


def unit_of(metric: Metric) -> str:
    ucum = METRICS[metric].components[0].ucum
    return DISPLAY_UNITS.get(ucum, ucum)


def thresholds_for(rules: Iterable[RuleSpec], metric: Metric) -> list[Threshold]:
    """The limits of the threshold and persistence rules watching ``metric`` (their tiers'
    conditions with the patient's effective parameters): one line per value, its label
    naming every condition at that value."""
    drawn = set(charted_components(metric))
    at: dict[float, dict[str, list[str]]] = {}  # value -> condition -> rule titles
    components: dict[float, str] = {}
    for rule in rules:
        if rule.metric is not metric:
            continue
        for tier in rule.tiers:
            for cond in tier.any:
                if cond.component not in drawn or cond.param not in rule.params:
                    continue
                value = float(rule.params[cond.param])
                text = f"{cond.component} {_OPS[cond.op]} {value:g}"
                titles = at.setdefault(value, {}).setdefault(text, [])
                if rule.title not in titles:
                    titles.append(rule.title)
                components.setdefault(value, cond.component)
    return [
        Threshold(
            components[v],
            v,
            "; ".join(f"{cond}: {', '.join(titles)}" for cond, titles in at[v].items()),
        )
        for v in sorted(at)
    ]


_OPS = {">": ">", ">=": "≥", "<": "<", "<=": "≤"}


def describe(metric: Metric, points: Sequence[Point]) -> str:
    """A text alternative for the chart: how many readings, when, and the latest values."""
    if not points:
        return describe_summary(metric, NO_READINGS)
    newest = max(points, key=lambda p: p[0])
    return describe_summary(
        metric, ChartSummary(len(points), min(p[0] for p in points), newest[0], newest[1])
    )


def describe_summary(metric: Metric, summary: ChartSummary) -> str:
    """``describe`` from what the database summed up of the chart's readings."""
    title = METRIC_TITLES[metric]
    first, last, latest = summary.first_at, summary.last_at, summary.latest
    if not summary.count or first is None or last is None or latest is None:
        return f"{title}: no readings."
    values = "/".join(f"{latest[c]:g}" for c in charted_components(metric) if c in latest)
    count = "1 reading" if summary.count == 1 else f"{summary.count} readings"
    return (
        f"{title}: {count} from {_utc(first)} to {_utc(last)}; latest {values} {unit_of(metric)}."
    )


def daily_means(buckets: Sequence[Bucket]) -> list[Point]:
    """One point per day of rollups (rpm/storage/rollups.py): each component's mean, at
    noon UTC of its day."""
    return [(b.start + _NOON, {name: s.mean for name, s in b.components.items()}) for b in buckets]


def render_svg(
    metric: Metric, points: Sequence[Point], thresholds: Sequence[Threshold], caption: str = ""
) -> bytes:
    """The chart of ``points`` (time, values) with ``thresholds``, as an SVG document;
    ``caption`` follows the title (what the points are when they are not readings)."""
    import matplotlib  # loaded with the first chart, not with the server

    with (
        _render_lock,
        matplotlib.rc_context(
            {
                # Text stays text (smaller, selectable, read by screen readers); stable
                # element ids, so equal charts are equal bytes.
                "svg.fonttype": "none",
                "svg.hashsalt": "rpm",
                "font.family": "DejaVu Sans",
                "font.size": 9,
                "text.color": _TEXT_COLOUR,
                "axes.labelcolor": _TEXT_COLOUR,
                "xtick.color": _TEXT_COLOUR,
                "ytick.color": _TEXT_COLOUR,
            }
        ),
    ):
        return _render(metric, points, thresholds, caption)


def _render(
    metric: Metric, points: Sequence[Point], thresholds: Sequence[Threshold], caption: str
) -> bytes:
    import matplotlib.dates as mdates
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, 2.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    title = METRIC_TITLES[metric] + (f" ({caption})" if caption else "")
    ax.set_title(title, loc="left", fontsize=10, fontweight="bold")
    ax.set_ylabel(unit_of(metric))
    ax.grid(True, color="#d9d9d9", linewidth=0.6)
    ordered = sorted(points, key=lambda p: p[0])
    components = charted_components(metric)
    plotted: list[float] = []
    for i, name in enumerate(components):
        series = [(t, v[name]) for t, v in ordered if name in v]
        if not series:
            continue
        colour, marker, style = _SERIES_STYLES[i % len(_SERIES_STYLES)]
        ys = [y for _, y in series]
        plotted.extend(ys)
        ax.plot(
            _days([t for t, _ in series]),
            ys,
            color=colour,
            marker=marker,
            markersize=4,
            linestyle=style,
            linewidth=1.4,
            label=name.replace("_", " "),
        )
    if not plotted:
        ax.text(0.5, 0.5, "No readings yet", transform=ax.transAxes, ha="center", va="center")
        ax.set_xticks([])
    else:
        times = [t for t, _ in ordered]
        if min(times) == max(times):  # one reading: an hour either side of it
            ax.set_xlim(*_days([min(times) - _HOUR, max(times) + _HOUR]))
        # matplotlib.dates has no type annotations for these two.
        locator = mdates.AutoDateLocator(tz=UTC, maxticks=7)  # type: ignore[no-untyped-call]
        # Each unit's longest step must reach the span where the next unit takes over (five
        # of it, minticks), or the locator warns and guesses (e.g. 4 days of daily means).
        for unit, longest in _LONGEST_STEPS.items():
            locator.intervald[unit] = [*locator.intervald[unit], longest]
        formatter = mdates.ConciseDateFormatter(locator, tz=UTC)  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(formatter)
        ax.set_xlabel("measured (UTC)")
        for th in thresholds:
            ax.axhline(th.value, color=_THRESHOLD_COLOUR, linestyle=(0, (5, 3)), linewidth=1)
            ax.annotate(
                th.label,
                xy=(1, th.value),
                xycoords=("axes fraction", "data"),
                xytext=(-4, 2),
                textcoords="offset points",
                ha="right",
                va="bottom",
                fontsize=7.5,
                color=_THRESHOLD_COLOUR,
            )
        values = plotted + [th.value for th in thresholds]
        low, high = min(values), max(values)
        pad = max((high - low) * 0.12, 1.0)
        ax.set_ylim(low - pad, high + pad)
        if len(components) > 1:
            ax.legend(loc="upper left", fontsize=8, frameon=False, ncols=len(components))
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Title": title})
    return buf.getvalue()


_LONGEST_STEPS = {6: 60, 5: 60, 4: 24, 3: 28, 1: 12}  # SECONDLY, MINUTELY, HOURLY, DAILY, MONTHLY


def _days(times: Sequence[datetime]) -> list[float]:
    """Matplotlib's date numbers (``date2num`` carries no type annotations)."""
    import matplotlib.dates as mdates

    return [float(d) for d in mdates.date2num(times)]  # type: ignore[no-untyped-call]


def _utc(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
