"""The analysis figures draw what they are given: one panel per slot / point / object, Fig. 7's colour code, and
plain figures when headless but a widget in a live kernel."""
from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from detr_nb_utils.analysis.attention import detected_objects, run_with_attention
from detr_nb_utils.models.detr import build_detr
from detr_nb_utils.notebook.figures_attention import (
    interactive_attention,
    plot_decoder_attention,
    plot_encoder_attention,
)
from detr_nb_utils.notebook.figures_queries import box_colours, plot_match_counts, plot_query_usage

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def attended():
    torch.manual_seed(0)
    model = build_detr(enc_layers=1, dec_layers=2, num_queries=6, hidden_dim=32, nheads=2, dim_feedforward=32)
    outputs, record = run_with_attention(model, torch.randn(1, 3, 64, 96), torch.zeros(1, 64, 96, dtype=torch.bool))
    image = torch.randint(0, 255, (3, 128, 192), dtype=torch.uint8)  # the original image, twice the size
    yield image, record, detected_objects(outputs, 0, threshold=0.0).head(3)
    plt.close("all")


def _drawn(fig: Figure) -> list:
    """The figure's panels: axes drawn on, colour bars left out."""
    return [ax for ax in fig.axes if (ax.axison or ax.images) and ax.get_label() != "<colorbar>"]


def test_fig7_colours_small_green_wide_red_tall_blue():
    rgb = box_colours(np.array([0.02, 0.9, 0.2]), np.array([0.02, 0.3, 0.9]))
    assert rgb.shape == (3, 3) and np.argmax(rgb[0]) == 1 and np.argmax(rgb[1]) == 0 and np.argmax(rgb[2]) == 2
    assert ((rgb >= 0) & (rgb <= 1)).all()


def test_query_usage_grid_has_one_panel_per_slot():
    records = pd.DataFrame({"slot": [3, 3, 7, 9], "cx": [0.1, 0.2, 0.5, 0.9], "cy": [0.5] * 4, "w": [0.1] * 4,
                            "h": [0.1] * 4, "is_object": [True, False, True, False]})
    fig = plot_query_usage(records, cols=2)
    assert [ax.get_title() for ax in _drawn(fig)] == ["slot 3 (2)", "slot 7 (1)", "slot 9 (1)"]
    fig = plot_query_usage(records, slots=[3, 9], objects_only=True)
    assert [ax.get_title() for ax in _drawn(fig)] == ["slot 3 (1)", "slot 9 (0)"]


def test_match_count_bars_and_selection_strip():
    fig = plot_match_counts(np.arange(10), {"first": [0, 1, 2], "spread": [0, 4, 9]})
    bars, strip = fig.axes
    assert len(bars.patches) == 10 and "45 objects" in bars.get_title()
    assert [t.get_text() for t in strip.get_yticklabels()] == ["first", "spread"]


def test_attention_figures_have_a_panel_per_point_and_object(attended):
    image, record, objects = attended
    fig = plot_encoder_attention(image, record, [(10, 20), (100, 150)])
    assert len(_drawn(fig)) == 2 and all(len(ax.images) == 2 for ax in _drawn(fig))
    assert "x=20, y=10 px" in _drawn(fig)[0].get_title()  # the point named by its axes
    assert [t.get_text() for t in fig.axes[-1].get_yticklabels()] == ["least", "most"]  # the colour key
    fig = plot_decoder_attention(image, record, objects, names={})
    assert len(_drawn(fig)) == 3 and all(len(ax.patches) == 1 for ax in _drawn(fig))
    assert fig.axes[0].get_xlim() == (0, 192)  # drawn over the whole original image
    assert "of each detected object" in fig._suptitle.get_text()
    fig = plot_decoder_attention(image, record, objects, names={}, detected=False)
    assert "the best-scoring queries (no detection above the threshold)" in fig._suptitle.get_text()
    plt.close("all")


def test_interactive_attention_is_plain_figures_when_headless_and_a_widget_live(attended):
    image, record, objects = attended
    figures = interactive_attention(image, record, objects, [(10, 20)], interactive=False)
    assert len(figures) == 2 and all(isinstance(f, Figure) for f in figures)
    ipywidgets = pytest.importorskip("ipywidgets")
    widget = interactive_attention(image, record, objects, [(10, 20), (50, 60)], interactive=True)
    assert isinstance(widget, ipywidgets.HBox)
    slider = widget.children[0].children[0]
    assert (slider.min, slider.max) == (0, 2)


def test_objects_per_image_axis_ends_at_the_data():
    from detr_nb_utils.notebook.figures import plot_objects_per_image

    few = pd.DataFrame({"side": ["train"] * 4 + ["val"] * 2, "boxes": [0, 1, 5, 3, 2, 4]})
    ax = plot_objects_per_image(few, 50).axes[0]
    assert ax.get_xlim()[1] <= 6 and "none above 50" in ax.get_title() and not ax.get_lines()
    many = pd.concat([few, pd.DataFrame({"side": ["val"], "boxes": [60]})])
    ax = plot_objects_per_image(many, 50).axes[0]
    assert ax.get_xlim()[1] >= 60 and len(ax.get_lines()) == 1 and ax.get_title() == "Objects per image"
    plt.close("all")


def test_detection_panels_name_the_ground_truth_and_the_predictions():
    from detr_nb_utils.notebook.figures import plot_detections

    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    panel = {"title": "image 7", "gt_boxes": torch.tensor([[2.0, 2, 20, 20], [30, 5, 50, 30]]),
             "gt_labels": torch.tensor([1, 18]), "boxes": torch.tensor([[3.0, 3, 19, 21]]),
             "labels": torch.tensor([1]), "scores": torch.tensor([0.9])}
    fig = plot_detections([image], [panel], {1: "person", 18: "dog"}, title="checkpoint", cols=1)
    ax = fig.axes[0]
    assert ax.get_title() == "image 7\nground truth: person, dog"
    assert "person 0.90" in [t.get_text() for t in ax.texts]
    plt.close(fig)
