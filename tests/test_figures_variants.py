"""06's figures agree with its tables: the curves are the mean over every seed of a variant (the headline's AP at the
final epoch), with the seeds' band, and say how many seeds they hold."""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from test_bootstrap import sample_gt  # noqa: F401 (fixture)
from test_comparison import analysed, quality, run_folders  # noqa: F401 (fixtures)

from detr_nb_utils.analysis import comparison
from detr_nb_utils.notebook.figures_variants import layer_bands, plot_variant_curves, plot_variant_layers, seed_band

matplotlib.use("Agg")


def test_the_curves_end_where_the_headline_is(analysed):  # noqa: F811
    _, _, main, bootstrap = analysed
    head = comparison.headline_table(bootstrap, main)
    bands = seed_band(main, "val_AP", 100.0)
    for v, band in bands.items():
        final = band.index.max()
        assert band.loc[final, "mean"] == pytest.approx(head.loc[v, "AP"])  # every seed, not the first one
        assert band.loc[final, "seeds"] == head.loc[v, "seeds"]
        assert band.loc[final, "min"] <= band.loc[final, "mean"] <= band.loc[final, "max"]
    two = [r.metrics.loc[2, "val_AP"] for r in main["dec6_q100"].values()]
    assert bands["dec6_q100"].loc[2, "max"] == pytest.approx(100 * max(two))


def test_the_figures_say_how_many_seeds_they_hold(analysed):  # noqa: F811
    _, _, main, _ = analysed
    fig = plot_variant_curves(main, "AP")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "dec6_q100 (mean of 2)" in labels and "dec3_q100 (run shallow_try)" in labels  # one run: named
    assert "band: lowest to highest seed" in fig._suptitle.get_text()
    assert len(fig.axes[0].collections) == 1  # a band only where there are several seeds
    layers = layer_bands(main)
    final = layers[(layers["variant"] == "dec6_q100") & (layers["at"] == "final epoch")]
    assert list(final["layer"]) == [1, 2, 3, 4, 5, 6] and (final["seeds"] == 2).all()
    expected = np.mean([100 * r.metrics.loc[2, "val_AP_layer_5"] for r in main["dec6_q100"].values()])
    assert final.set_index("layer").loc[6, "mean"] == pytest.approx(expected)
    assert plot_variant_layers(main).axes[0].get_ylabel() == "COCO AP (points)"
