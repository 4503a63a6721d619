"""The confusion matrix on hand-built images: right and wrong classes, the background row and column, the score
threshold, crowd regions, and pairing by IoU."""
from __future__ import annotations

from test_errors import dets, make_gt

from detr_nb_utils.analysis.confusion import BACKGROUND, confusion_matrix

# image 1: an "a" at (10, 10, 20, 20) and a "b" at (60, 60, 20, 20); image 2: an "a" and a crowd region of "b"
GT = make_gt([(1, 1, 10, 10, 20, 20), (1, 2, 60, 60, 20, 20), (2, 1, 10, 10, 20, 20), (2, 2, 50, 50, 40, 40, 1)],
             n_images=2)


def test_rows_true_columns_detected_with_background():
    m = confusion_matrix(GT, dets([
        (1, 1, 0.9, 10, 10, 20, 20),  # the "a", right
        (1, 1, 0.8, 60, 60, 20, 20),  # the "b" called "a"
        (1, 2, 0.7, 40, 0, 10, 10),  # nothing there
        (2, 1, 0.3, 10, 10, 20, 20),  # below the threshold: image 2's "a" is missed
        (2, 2, 0.9, 55, 55, 20, 20),  # on the crowd region: ignored
    ]), score_threshold=0.5)
    assert list(m.index) == list(m.columns) == ["a", "b", BACKGROUND]
    assert m.loc["a", "a"] == 1 and m.loc["b", "a"] == 1
    assert m.loc[BACKGROUND, "b"] == 1  # a detection of no object
    assert m.loc["a", BACKGROUND] == 1  # image 2's "a", not detected above 0.5
    assert m.to_numpy().sum() == 4 and m.attrs["ignored"] == 1
    assert m.attrs["score_threshold"] == 0.5 and m.attrs["n_images"] == 2
    lower = confusion_matrix(GT, dets([(2, 1, 0.3, 10, 10, 20, 20)]), img_ids=[2], score_threshold=0.2)
    assert lower.loc["a", "a"] == 1


def test_pairs_by_decreasing_iou_each_once():
    # two detections on one object: the closer one pairs, the other is a detection of no object
    m = confusion_matrix(GT, dets([(1, 2, 0.9, 11, 10, 20, 20), (1, 1, 0.6, 10, 10, 20, 20)]), img_ids=[1])
    assert m.loc["a", "a"] == 1 and m.loc["a", "b"] == 0 and m.loc[BACKGROUND, "b"] == 1
    assert m.loc["b", BACKGROUND] == 1  # the "b" of image 1, not detected


def test_below_the_iou_threshold_is_no_pair():
    m = confusion_matrix(GT, dets([(1, 1, 0.9, 10, 10, 20, 8)]), img_ids=[1])  # IoU 0.4
    assert m.loc["a", "a"] == 0 and m.loc["a", BACKGROUND] == 1 and m.loc[BACKGROUND, "a"] == 1
