"""Figures: colour bars, the grid's row headers, the display clip, notebook display."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import pairlens
from pairlens.viz import COLORBAR_LABEL, display_map, grid_figure, pair_figure


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]


@pytest.fixture(scope="module")
def explanations():
    model = pairlens.load_model("digits")
    torch.manual_seed(0)
    x1, x2 = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    return [pairlens.explain(model, x1, x2, method=m, sources=("a.png", "b.png"))
            for m in ("grad-cam", "interaction-cam", "input-x-gradient", "random", "smoothgrad")]


def test_every_figure_has_the_labelled_colour_bar(explanations):
    for fig in (pair_figure(explanations[0]), grid_figure(explanations),
                grid_figure(explanations[:2])):
        assert COLORBAR_LABEL in texts(fig)
    assert COLORBAR_LABEL == "importance (min-max normalised per image)"


def test_the_grid_has_a_row_header_per_method(explanations):
    fig = grid_figure(explanations)
    found = texts(fig)
    for exp in explanations:
        assert any(t.split("\n")[0] == exp.method for t in found), exp.method
    assert "a.png" in found and "b.png" in found
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # lay out, then check no header overlaps an image
    canvas.draw()
    renderer = canvas.get_renderer()
    images = [ax.get_window_extent(renderer) for ax in fig.axes if ax.images]
    headers = [t.get_window_extent(renderer) for t in fig.texts + [
        t for ax in fig.axes if not ax.images for t in ax.texts]]
    assert not any(h.overlaps(i) for h in headers for i in images)
    width, height = fig.get_size_inches() * fig.dpi
    assert width >= 700 and height <= 1600  # two blocks side by side, readable at 100 %


def test_the_display_clip_makes_spiky_maps_visible():
    """A gradient-like map: a ramp plus one huge pixel. Plain min-max shows only the spike;
    the 99th-percentile clip shows the ramp. The saved map itself is never changed."""
    ramp = torch.linspace(0, 1, 64 * 64).view(64, 64)
    spiky = ramp.clone()
    spiky[0, 0] = 1000.0
    assert np.median(display_map(spiky, clip=100)) < 0.001
    shown = display_map(spiky)
    assert 0.4 < np.median(shown) < 0.6 and shown.max() == 1.0
    assert spiky[0, 0] == 1000.0
    np.testing.assert_allclose(display_map(ramp, clip=100), ramp.numpy(), atol=1e-6)
    assert display_map(torch.zeros(8, 8)).max() == 0  # a blank map stays blank


def test_notebook_display(explanations):
    exp = explanations[1]
    assert exp._repr_png_().startswith(b"\x89PNG")
    assert "<img" in exp._repr_html_()
    text = repr(exp)
    assert len(text) < 200 and "tensor(" not in text and "interaction-cam" in text
    one = exp.select(0)
    assert len(one) == 1 and torch.equal(one.maps[0], exp.maps[0][:1])


def test_save_writes_figure_maps_and_metadata(explanations, tmp_path):
    written = explanations[0].save(tmp_path)
    assert sorted(p.suffix for p in written) == [".json", ".npz", ".png"]
    saved = np.load(tmp_path / "grad-cam.npz")["map1"]
    np.testing.assert_array_equal(saved, explanations[0].maps[0].numpy())


def test_importing_pairlens_keeps_pyplot_unloaded():
    code = "import pairlens, sys; pairlens.load_model; print('matplotlib.pyplot' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "False"


def test_fixed_target_and_correspondence_figures_have_the_colour_bar():
    """An image explained against a fixed embedding has one column (no image 2) and says what it
    was compared with; the correspondence figure labels its marginal maps like every figure."""
    model = pairlens.load_model("digits")
    torch.manual_seed(0)
    x1, x2 = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        z = model.embed(x2)[0]
    fixed = pairlens.explain(model, x1, target=z, method="grad-cam", sources=("a.png", "b"))
    fig = pair_figure(fixed)
    assert COLORBAR_LABEL in texts(fig)
    assert len([ax for ax in fig.axes if ax.images]) == 2  # image and its overlay, one column
    assert any("against a fixed" in t for t in texts(fig))
    assert COLORBAR_LABEL in texts(grid_figure([fixed, fixed]))
    corr = pairlens.correspond(model, x1, x2, method="feature-grid", grid=4)
    fig = corr.figure()
    assert COLORBAR_LABEL in texts(fig) and "pair relevance" in texts(fig)
    one = corr.select(0)
    assert one.relevance.shape == corr.relevance.shape and len(one) == 1
