"""Figures and tables for the claim report, as self-contained HTML (the forest plot of every claim test is an HTML
table with a small SVG plot per row, so its labels and numbers are text).

A researcher judges a claim by the statistic and by the pictures behind it: patching heatmaps (layer x
position, layer x head) on a diverging colour scale centred at 0, the logit-lens line, scatter plots of
one patching effect against another, and the attention patterns of the top heads. Each function here
takes tensors and returns a matplotlib ``Figure``; :func:`figure_html` turns a figure into an ``<img>``
whose PNG is embedded as base64, so a report opens offline with nothing fetched.

Figures are built with ``matplotlib.figure.Figure`` directly (no ``pyplot``): no global state, no
backend switching, nothing changed on import.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

__all__ = [
    "Table",
    "attention_figure",
    "figure_html",
    "figure_png",
    "forest_html",
    "heatmap",
    "line_figure",
    "plain_text",
    "scatter_figure",
    "summary_table",
]


def _numpy(values: Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=float)


def _ticks(ax, axis: str, labels: Sequence[str] | None, n: int, every: int = 1) -> None:
    if labels is None:
        return
    if len(labels) != n:
        raise ValueError(f"{len(labels)} {axis} labels for {n} {axis} entries.")
    positions = list(range(0, n, every))
    if axis == "x":
        ax.set_xticks(positions, [labels[i] for i in positions], rotation=90, fontsize=7)
    else:
        ax.set_yticks(positions, [labels[i] for i in positions], fontsize=7)


def heatmap(
    values: Float[Tensor, "row col"],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    xticklabels: Sequence[str] | None = None,
    yticklabels: Sequence[str] | None = None,
    colorbar_label: str = "",
    highlight: Sequence[tuple[int, int]] = (),
) -> Figure:
    """A heatmap on a diverging colour scale (red-white-blue) centred at 0, with labelled axes.

    ``highlight`` draws a box around the given ``(row, col)`` cells (e.g. the heads a spec names).
    """
    data = _numpy(values)
    if data.ndim != 2:
        raise ValueError(f"heatmap needs a 2-d array, got shape {data.shape}.")
    bound = float(np.nanmax(np.abs(data))) if data.size and np.isfinite(data).any() else 1.0
    bound = bound or 1.0
    fig = Figure(figsize=(min(12, 2 + 0.45 * data.shape[1]), min(10, 1.8 + 0.3 * data.shape[0])), dpi=90,
                 layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(data, cmap="RdBu", norm=TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound), aspect="auto",
                      origin="lower", interpolation="nearest")
    fig.colorbar(image, ax=ax, label=colorbar_label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    _ticks(ax, "x", xticklabels, data.shape[1])
    _ticks(ax, "y", yticklabels, data.shape[0], every=max(1, data.shape[0] // 24))
    for axis in (ax.xaxis, ax.yaxis):  # cells are whole layers, positions, heads
        if not axis.get_ticklabels() or axis.get_major_locator().__class__.__name__ != "FixedLocator":
            axis.set_major_locator(MaxNLocator(integer=True))
    for row, col in highlight:
        ax.add_patch(_box(row, col))
    return fig


def _box(row: int, col: int):
    from matplotlib.patches import Rectangle

    return Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.5)


def line_figure(
    values: Float[Tensor, " point"] | Mapping[str, Float[Tensor, " point"]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    xticklabels: Sequence[str] | None = None,
    band: tuple[Float[Tensor, " point"], Float[Tensor, " point"]] | None = None,
) -> Figure:
    """A line (or several, from a mapping name -> values), with an optional confidence band."""
    series = values if isinstance(values, Mapping) else {"": values}
    fig = Figure(figsize=(8, 3.5), dpi=90, layout="constrained")
    ax = fig.add_subplot()
    for name, ys in series.items():
        ys = _numpy(ys)
        ax.plot(np.arange(len(ys)), ys, marker="o", markersize=3, label=name or None)
        n = len(ys)
    if band is not None:
        ax.fill_between(np.arange(n), _numpy(band[0]), _numpy(band[1]), alpha=0.25, label="CI")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    _ticks(ax, "x", xticklabels, n, every=max(1, n // 40))
    if len(series) > 1 or band is not None:
        ax.legend(fontsize=8)
    return fig


def scatter_figure(
    x: Float[Tensor, " point"],
    y: Float[Tensor, " point"],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    labels: Sequence[str] | None = None,
    n_labelled: int = 6,
    diagonal: bool = True,
) -> Figure:
    """A scatter plot of ``y`` against ``x``; the ``n_labelled`` points furthest from 0 carry their label."""
    xs, ys = _numpy(x).ravel(), _numpy(y).ravel()
    if xs.shape != ys.shape:
        raise ValueError(f"scatter needs x and y of one shape, got {xs.shape} and {ys.shape}.")
    fig = Figure(figsize=(5, 4.5), dpi=90, layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(xs, ys, s=14, alpha=0.8)
    if diagonal and xs.size:
        lo, hi = float(min(xs.min(), ys.min())), float(max(xs.max(), ys.max()))
        ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, linestyle="--", label="y = x")
        ax.legend(fontsize=8)
    ax.axhline(0, color="lightgrey", linewidth=0.6)
    ax.axvline(0, color="lightgrey", linewidth=0.6)
    if labels is not None:
        for i in np.argsort(-(np.abs(xs) + np.abs(ys)))[:n_labelled]:
            ax.annotate(labels[i], (xs[i], ys[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return fig


def attention_figure(
    patterns: Float[Tensor, "head query key"],
    *,
    head_labels: Sequence[str],
    tokens: Sequence[str],
    title: str,
) -> Figure:
    """Attention patterns of a few heads side by side (query rows, key columns, tokens on both axes)."""
    data = _numpy(patterns)
    if data.ndim != 3 or data.shape[0] != len(head_labels):
        raise ValueError(f"attention_figure needs [head, query, key] with one label per head; got shape "
                         f"{data.shape} and {len(head_labels)} labels.")
    n = data.shape[0]
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    size = 0.22 * len(tokens) + 1.2
    fig = Figure(figsize=(cols * size + 1, rows * size + 0.6), dpi=90, layout="constrained")
    fig.suptitle(title)
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        image = ax.imshow(data[i], cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(head_labels[i], fontsize=9)
        ax.set_xlabel("key (source)", fontsize=7)
        ax.set_ylabel("query (destination)", fontsize=7)
        _ticks(ax, "x", tokens, data.shape[2])
        _ticks(ax, "y", tokens, data.shape[1])
    fig.colorbar(image, ax=fig.axes, label="attention", shrink=0.8)
    return fig


@contextlib.contextmanager
def plain_text() -> Iterator[None]:
    """Within this block, matplotlib draws every text as written: ``$...$`` is not read as mathtext (a model
    folder named ``m$\\undefinedcmd$x`` in a title would otherwise end the drawing in a parse error). Figures
    here use no mathtext."""
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False}):
        yield


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes, cropped to what it draws (``bbox_inches="tight"``): no label is cut, even one
    longer than its axis (a colorbar's). Text is drawn as written (:func:`plain_text`), never as mathtext."""
    from matplotlib.text import Text

    buffer = io.BytesIO()
    with plain_text():
        for text in fig.findobj(Text):  # made before plain_text: the figure's own labels, titles, ticks
            text.set_parse_math(False)
        fig.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.1)
    return buffer.getvalue()


class Table:
    """A small table for the claim report, drawn where a figure would be (claims return it from a figure
    function): column names and rows of cells, shown as text."""

    def __init__(self, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        if any(len(row) != len(columns) for row in rows):
            raise ValueError(f"Table: every row needs {len(columns)} cells ({list(columns)}).")
        self.columns, self.rows = list(columns), [list(row) for row in rows]

    def html(self, *, title: str = "", caption: str = "") -> str:
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td><code>{html.escape(str(v))}</code></td>" for v in row) + "</tr>"
                       for row in self.rows)
        text = f"<b>{html.escape(title)}</b>" + (f"<br/>{html.escape(caption)}" if caption else "")
        return (f'<figure class="claim-figure"><table class="claim-table"><tr>{head}</tr>{body}</table>'
                f"<figcaption>{text}</figcaption></figure>")


def figure_html(fig: Figure | Table, *, alt: str = "", caption: str = "") -> str:
    """The figure as an ``<img>`` whose PNG is embedded (base64): nothing is fetched when the page opens.
    ``caption`` (what a reader should see if the claim holds) goes under the title. A :class:`Table` is
    written as an HTML table."""
    if isinstance(fig, Table):
        return fig.html(title=alt, caption=caption)
    data = base64.b64encode(figure_png(fig)).decode("ascii")
    label = html.escape(alt or (fig._suptitle.get_text() if fig._suptitle else "") or "figure", quote=True)
    text = f"<b>{label}</b>" + (f"<br/>{html.escape(caption)}" if caption else "")
    return (f'<figure class="claim-figure"><img alt="{label}" src="data:image/png;base64,{data}" '
            f'style="max-width:100%"/><figcaption>{text}</figcaption></figure>')


from circuit.palette import BAR_OPACITY, MARKERS, MUTED_COLOUR, TEXT_COLOUR, VERDICT_COLOURS  # noqa: E402

SYMBOLS = {">=": "≥", "<=": "≤", ">": ">", "<": "<", "excludes": "≠"}
"""How the forest plot prints a rule's direction."""


def forest_html(rows: Sequence[Mapping], *, plot_width: int = 220) -> str:
    """The forest plot as an HTML table, one row per claim test: its claim id and a short statement, a small
    plot on the row's own scale (the interval as a bar and the estimate as a dot, both in the colour of the
    verdict; the threshold as a dashed line), the estimate [interval] in digits, the rule's direction and
    threshold, and the verdict (with a regression's or improvement's mark). Every text is escaped.

    Each row is a mapping with ``claim``, ``sentence`` (the short statement), ``title`` (hover text), ``estimate``,
    ``low``, ``high`` (None without an interval), ``level``, ``kind`` (``>=``, ``<=``, ``>``, ``<``,
    ``excludes`` or None), ``threshold`` (a number or None), ``rule`` (the rule in words), ``verdict`` and
    ``marker`` (``regressed``, ``improved`` or None).
    """
    from circuit.numbers import digits_apart, interval_text, number

    body = []
    for row in rows:
        verdict = str(row.get("verdict") or "")
        colour = VERDICT_COLOURS.get(verdict, MUTED_COLOUR)
        estimate, low, high, threshold = (_finite(row.get(k)) for k in ("estimate", "low", "high", "threshold"))
        text = interval_text(row.get("estimate"), row.get("low"), row.get("high"), level=row.get("level"),
                             against=[] if threshold is None else [threshold])
        if threshold is not None:
            digits = digits_apart([threshold], [v for v in (estimate, low, high) if v is not None])
            rule = f"{SYMBOLS.get(str(row.get('kind')), '?')} {number(threshold, digits)}"
        else:
            rule = "—"
        marker = MARKERS.get(str(row.get("marker") or ""))
        mark = (f" <span class='claims-marker' style='color:{marker[1]}' title='{html.escape(marker[2], quote=True)}'>"
                f"{marker[0]} {html.escape(str(row['marker']))}</span>" if marker else "")
        body.append(
            f"<tr class='forest-row {html.escape(verdict, quote=True)}' "
            f"title='{html.escape(str(row.get('title', '')), quote=True)}'>"
            f"<td class='forest-label'><code>{html.escape(str(row.get('claim', '')))}</code> "
            f"{html.escape(str(row.get('sentence', '')))}</td>"
            f"<td class='forest-plot'>{_forest_svg(estimate, low, high, threshold, colour, plot_width)}</td>"
            f"<td class='forest-value'>{html.escape(text)}</td>"
            f"<td class='forest-rule' title='{html.escape(str(row.get('rule', '')), quote=True)}'>{html.escape(rule)}</td>"
            f"<td class='forest-verdict' style='color:{colour}'><b>{html.escape(verdict or '—')}</b>{mark}</td></tr>")
    legend = ("<p class='claim-legend'>One row per claim test, each plot on its own scale: the bar is the confidence "
              "interval and the dot the estimate, coloured by the verdict (" + ", ".join(
                  f"<b style='color:{VERDICT_COLOURS[v]}'>{v}</b>" for v in ("supported", "refuted", "inconclusive"))
              + "); the dashed line is the threshold; the rule column gives its direction. "
              + " ".join(f"<span style='color:{c}'>{s}</span> {html.escape(m)}." for s, c, m in MARKERS.values())
              + "</p>")
    return (f"<table class='claims-forest' aria-label='Forest plot of every claim test'><thead><tr><th>claim</th>"
            f"<th>statistic, CI (bar) and threshold (dashed)</th><th>estimate [CI]</th><th>rule</th><th>verdict</th>"
            f"</tr></thead><tbody>{''.join(body)}</tbody></table>{legend}")


def _forest_svg(estimate: float | None, low: float | None, high: float | None, threshold: float | None,
                colour: str, width: int, height: int = 14) -> str:
    """One forest row's plot: the interval's bar, the estimate's dot and the threshold's dashed line, on a scale
    spanning them with a margin."""
    points = [v for v in (estimate, low, high, threshold) if v is not None]
    if not points:
        return "<span class='claim-legend'>no finite statistic</span>"
    lo, hi = min(points), max(points)
    margin = (hi - lo) * 0.1 or max(abs(hi), 1.0) * 0.1
    lo, hi = lo - margin, hi + margin

    def x(value: float) -> float:
        return round((value - lo) / (hi - lo) * width, 1)

    parts = [f"<line x1='0' y1='{height / 2}' x2='{width}' y2='{height / 2}' stroke='#d0d7de' stroke-width='1'/>"]
    if low is not None and high is not None:
        parts.append(f"<rect x='{x(low)}' y='{height / 2 - 3}' width='{max(1.0, x(high) - x(low))}' height='6' "
                     f"fill='{colour}' fill-opacity='{BAR_OPACITY}'/>")
    if estimate is not None:
        parts.append(f"<circle cx='{x(estimate)}' cy='{height / 2}' r='4' fill='{colour}' stroke='#ffffff'/>")
    if threshold is not None:
        parts.append(f"<line x1='{x(threshold)}' y1='0' x2='{x(threshold)}' y2='{height}' stroke='{TEXT_COLOUR}' "
                     f"stroke-width='1.5' stroke-dasharray='3,2'/>")
    return (f"<svg width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img' "
            f"aria-hidden='true'>{''.join(parts)}</svg>")


def _finite(value: object) -> float | None:
    """``value`` as a finite float, or None (None, NaN, infinities, the strings JSON keeps them as)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


_COLOURS = {**VERDICT_COLOURS, "error": "#cf222e"}
"""A claims x models cell's colour by its first word (an error is a failure there)."""


def summary_table(outcomes: Mapping[tuple[str, str], str], *, claims: Sequence[str], models: Sequence[str],
                  statements: Mapping[str, str] | None = None) -> str:
    """An HTML table, claims x models, each cell the outcome (passed/failed/skipped, or a short text)."""
    statements = statements or {}
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    rows = []
    for claim in claims:
        cells = []
        for m in models:
            outcome = outcomes.get((claim, m), "not run")
            colour = _COLOURS.get(outcome.split()[0] if outcome else "", MUTED_COLOUR)
            cells.append(f'<td style="color:{colour};font-weight:bold">{html.escape(outcome)}</td>')
        title = html.escape(statements.get(claim, ""), quote=True)
        rows.append(f'<tr><td title="{title}"><code>{html.escape(claim)}</code></td>{"".join(cells)}</tr>')
    return (f'<table class="claims-summary" border="1" style="border-collapse:collapse">'
            f"<thead><tr><th>claim</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def heads_of(values: Float[Tensor, "layer head"], k: int) -> list[tuple[int, int]]:
    """The ``k`` (layer, head) cells with the largest |value|, largest first."""
    flat = torch.as_tensor(values).flatten().abs()
    top = torch.topk(flat, min(k, flat.numel())).indices.tolist()
    n_heads = values.shape[-1]
    return [(i // n_heads, i % n_heads) for i in top]
