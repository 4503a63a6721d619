"""Which epoch a run reports as best: a fine-tuned one; epoch 0 is the starting point, reported apart."""
from detr_nb_utils.training.runs import best_epoch


def test_best_epoch_prefers_fine_tuned_epochs():
    history = [{"epoch": 0, "val_AP": 0.42, "val_loss_total": 10.0},
               {"epoch": 1, "val_AP": 0.40, "val_loss_total": 12.0},
               {"epoch": 2, "val_AP": 0.41, "val_loss_total": 11.0},
               {"epoch": 3, "val_AP": 0.41, "val_loss_total": float("nan")}]
    assert best_epoch(history, "val_AP", "max") == 2  # earliest of the tie, never the untrained epoch 0
    assert best_epoch(history, "val_loss_total", "min") == 2  # non-finite values are skipped
    assert best_epoch(history[:1], "val_AP", "max") == 0  # before any training, epoch 0 is all there is
    assert best_epoch([{"epoch": 1}], "val_AP", "max") is None
