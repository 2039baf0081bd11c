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
