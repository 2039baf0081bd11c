"""Report figures: every figure renders to a non-blank PNG embedded in the HTML, and the summary table."""

import base64
import io
import re

import pytest
import torch
from PIL import Image

from circuit.report import (
    attention_figure,
    figure_html,
    figure_png,
    forest_html,
    heads_of,
    heatmap,
    line_figure,
    scatter_figure,
    summary_table,
)


def non_blank(png: bytes) -> bool:
    image = Image.open(io.BytesIO(png)).convert("L")
    low, high = image.getextrema()
    return image.size[0] > 50 and image.size[1] > 50 and high - low > 100


FIGURES = {
    "heatmap": lambda: heatmap(torch.randn(3, 5), title="t", xlabel="position", ylabel="layer",
                               xticklabels=list("abcde"), highlight=[(1, 2)]),
    "line": lambda: line_figure({"a": torch.arange(5.0), "b": -torch.arange(5.0)}, title="t", xlabel="x",
                                ylabel="y", xticklabels=list("abcde"), band=(torch.zeros(5), torch.ones(5))),
    "scatter": lambda: scatter_figure(torch.randn(8), torch.randn(8), title="t", xlabel="x", ylabel="y",
                                      labels=[f"L0H{i}" for i in range(8)]),
    "attention": lambda: attention_figure(torch.softmax(torch.randn(2, 4, 4), -1), head_labels=["L0H1", "L1H0"],
                                          tokens=["<bos>", "1", " x", "2"], title="t"),
    # a colour bar label longer than its axis is high: the cut "(patched - corrupted) / (clean - co"
    "short heatmap, long colorbar label": lambda: heatmap(
        torch.randn(2, 3), title="t", xlabel="position", ylabel="layer", xticklabels=["<bos>", "12", " ="],
        colorbar_label="(patched - corrupted) / (clean - corrupted)"),
}


@pytest.mark.parametrize("name", FIGURES)
def test_figures_render_to_non_blank_png(name):
    assert non_blank(figure_png(FIGURES[name]()))


def test_heatmap_is_centred_at_zero_on_a_diverging_scale():
    fig = heatmap(torch.tensor([[0.1, 2.0], [-0.5, 0.0]]), title="t", xlabel="x", ylabel="y")
    image = fig.axes[0].images[0]
    assert image.get_cmap().name == "RdBu"
    assert image.norm.vcenter == 0 and image.norm.vmin == -2.0 and image.norm.vmax == 2.0
    assert fig.axes[0].get_xlabel() == "x" and fig.axes[0].get_ylabel() == "y"


def test_figure_html_embeds_the_png_and_fetches_nothing():
    html = figure_html(FIGURES["heatmap"](), alt="a <heatmap>")
    assert 'alt="a &lt;heatmap&gt;"' in html
    data = re.search(r'src="data:image/png;base64,([^"]+)"', html)[1]
    assert non_blank(base64.b64decode(data))
    assert "http" not in html


def test_label_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="3 x labels for 5 x entries"):
        heatmap(torch.zeros(2, 5), title="t", xlabel="x", ylabel="y", xticklabels=list("abc"))


def test_summary_table_is_claims_by_models():
    html = summary_table({("a", "m1"): "passed", ("a", "m2"): "failed"}, claims=["a", "b"], models=["m1", "m2"],
                         statements={"a": "A holds"})
    assert html.count("<tr>") == 3
    assert "not run" in html and 'title="A holds"' in html


def test_heads_of_orders_by_magnitude():
    assert heads_of(torch.tensor([[0.1, -3.0], [2.0, 0.0]]), 2) == [(0, 1), (1, 0)]


@pytest.mark.parametrize("name", FIGURES)
def test_the_saved_image_contains_every_text_of_the_figure(name):
    """No label is cut: the PNG ``figure_png`` saves spans every visible text artist's box (in the figure's
    pixels, the saved image's origin is the tight box's corner, as ``savefig(bbox_inches="tight")`` sets it)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    fig = FIGURES[name]()
    png = Image.open(io.BytesIO(figure_png(fig)))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    # where the saved image lies in the drawn figure: its size from the PNG, centred on the tight box
    tight = fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)  # inches -> pixels
    x0 = tight.x0 - (png.size[0] - tight.width) / 2
    y0 = tight.y0 - (png.size[1] - tight.height) / 2
    if all(abs(a - b) <= 1 for a, b in zip(png.size, fig.bbox.size)):  # saved whole: the image is the figure
        x0 = y0 = 0
    ticks, drawn_ticks = set(), []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks():
                ticks |= {tick.label1, tick.label2}
                if lo - 1e-9 <= tick.get_loc() <= hi + 1e-9:  # matplotlib draws only the ticks in range
                    drawn_ticks += [tick.label1, tick.label2]
    texts = [t for t in fig.findobj(Text) if t not in ticks] + drawn_ticks
    texts = [t for t in texts if t.get_visible() and t.get_text().strip()]
    assert texts
    for text in texts:
        box = text.get_window_extent(renderer)
        inside = (box.x0 >= x0 - 1 and box.y0 >= y0 - 1 and box.x1 <= x0 + png.size[0] + 1
                  and box.y1 <= y0 + png.size[1] + 1)
        assert inside, (f"{name}: text {text.get_text()!r} at {box.bounds} lies outside the saved image "
                        f"({x0:.0f}, {y0:.0f}, {png.size[0]} x {png.size[1]} px)")


FOREST = [
    {"claim": "c<1>", "sentence": "a & b", "title": "T", "estimate": 0.9, "low": 0.85, "high": 0.95, "level": 0.9,
     "kind": ">=", "threshold": 0.8, "rule": "CI low >= 0.8", "verdict": "supported", "marker": "regressed"},
    {"claim": "b", "sentence": "s", "title": "", "estimate": 3.0, "low": 1.0, "high": 5.0, "level": None,
     "kind": "<=", "threshold": 4.0, "rule": "CI high <= 4", "verdict": "inconclusive", "marker": "improved"},
    {"claim": "c", "sentence": "s", "title": "", "estimate": 0.9999912, "low": 0.9999874, "high": 0.9999935,
     "level": 0.97, "kind": ">=", "threshold": 1.0, "rule": "CI high >= 1", "verdict": "refuted", "marker": None},
    {"claim": "d", "sentence": "s", "title": "", "estimate": "NaN", "low": None, "high": None, "level": None,
     "kind": None, "threshold": None, "rule": "", "verdict": "refuted", "marker": None},
]


def test_the_forest_plot_is_a_row_per_claim_test_with_numbers_rule_direction_and_verdict_colour():
    html = forest_html(FOREST)
    rows = re.findall(r"<tr class='forest-row (\w+)'.*?</tr>", html)
    assert rows == ["supported", "inconclusive", "refuted", "refuted"]
    assert "<code>c&lt;1&gt;</code> a &amp; b" in html  # escaped label: claim id and short statement
    assert "0.9 [90% CI 0.85, 0.95]" in html and "≥ 0.8" in html and "≤ 4" in html
    assert "0.999991 [97% CI 0.999987, 0.999993]" in html, "an interval end printed as its threshold"
    assert "style='color:#1a7f37'><b>supported</b>" in html and "style='color:#9a6700'><b>inconclusive</b>" in html
    assert "▼ regressed" in html and "▲ improved" in html
    assert html.count("fill='#9a6700'") == 2, "the inconclusive row's bar and dot are not in its verdict's colour"
    assert "no finite statistic" in html  # a NaN row draws no bar
