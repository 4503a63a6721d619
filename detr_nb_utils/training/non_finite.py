"""NaN and infinity stopped where they start: the model's outputs, checked before the matcher, and the loss.

A diverging run (too high a learning rate, a damaged checkpoint) first shows as non-finite ``pred_logits`` or
``pred_boxes``; left alone, the matcher then fails inside scipy ("matrix contains invalid numeric entries"), a
message that names neither the run nor the cause. :func:`finite_flags` marks every output of every decoder layer as
finite or not on the device, without waiting for it; the training step reads these flags together with the loss's
own check, in the one device-to-host transfer a step already made for that check, and evaluation reads them with
its loss terms. Used by :mod:`.engine` (notebooks 03-05, 07, the command line) and :mod:`.evaluation`.
"""
from __future__ import annotations

import torch

#: the outputs checked in every decoder layer (the data contract's ``pred_logits``, ``pred_boxes``)
OUTPUT_KEYS = ("pred_logits", "pred_boxes")


class NonFiniteError(RuntimeError):
    """A NaN or infinite number stopped training or evaluation before it reached the weights or the run folder."""


class NonFiniteLossError(NonFiniteError):
    """The training loss became NaN or infinite; the run stops before the optimizer step."""

    def __init__(self, epoch: int, step: int, loss_dict: dict[str, float]) -> None:
        terms = ", ".join(f"{k}={v:.4g}" for k, v in loss_dict.items())
        super().__init__(f"non-finite loss at epoch {epoch}, step {step}: {terms}. Training stopped before the "
                         f"optimizer step; the run folder keeps the last finished epoch. Lower lr or clip_max_norm.")
        self.epoch, self.step, self.loss_dict = epoch, step, loss_dict


class NonFiniteOutputError(NonFiniteError):
    """The model's outputs hold NaN or infinite values (named in ``outputs``), found before the matcher.

    ``where``: when it happened (epoch and step, or the evaluation batch); ``advice``: what to do."""

    def __init__(self, where: str, outputs: list[str], advice: str) -> None:
        self.where, self.outputs, self.advice = where, outputs, advice
        super().__init__(self._text())

    def _text(self) -> str:
        return (f"non-finite model output at {self.where}: {', '.join(self.outputs)} "
                f"{'holds' if len(self.outputs) == 1 else 'hold'} NaN or infinite values (checked before the "
                f"matcher). {self.advice}")

    def reword(self, where: str | None = None, advice: str | None = None) -> NonFiniteOutputError:
        """Say more about when it happened, or what to do (the caller knows the epoch); returns itself."""
        self.where, self.advice = where or self.where, advice or self.advice
        self.args = (self._text(),)
        return self


def _layers(outputs: dict) -> list[dict]:
    return [*outputs.get("aux_outputs", []), outputs]


def output_names(outputs: dict) -> list[str]:
    """The name of each flag of :func:`finite_flags`, in its order: per key of :data:`OUTPUT_KEYS`, decoder layers
    0 … L-1, the last being the final layer (``pred_boxes``), the others ``aux_outputs[l].pred_boxes``."""
    last = len(_layers(outputs)) - 1
    return [key if layer == last else f"aux_outputs[{layer}].{key}"
            for key in OUTPUT_KEYS for layer in range(last + 1)]


@torch.no_grad()
def finite_flags(outputs: dict) -> torch.Tensor:
    """bool ``[2·L]`` on the outputs' device: True where every value of that output is finite (order:
    :func:`output_names`). Two small kernels per key (stack, sum), a concatenation and ``isfinite``; never
    synchronises with the device.

    An output is finite exactly when its float64 sum is: NaN and infinity propagate through a sum (inf - inf is
    NaN), and float32 values cannot overflow a float64 sum. The sum is several times cheaper than ``isfinite(x).all()``
    on the CPU."""
    layers = _layers(outputs)
    sums = [torch.stack([layer[key] for layer in layers]).flatten(1).sum(1, dtype=torch.float64) for key in OUTPUT_KEYS]
    return torch.isfinite(torch.cat(sums))


def non_finite_outputs(flags: torch.Tensor | list, outputs: dict) -> list[str]:
    """The names of the outputs :func:`finite_flags` marked as not finite (reading a tensor synchronises)."""
    flags = flags.tolist() if isinstance(flags, torch.Tensor) else flags
    return [name for name, ok in zip(output_names(outputs), flags) if not ok]


#: what to do when training produces non-finite outputs
TRAINING_ADVICE = ("Training stopped before the optimizer step; the run folder keeps the last finished epoch. "
                   "Lower lr or clip_max_norm.")
#: what to do when the evaluated weights produce them (the engine says which weights)
EVALUATION_ADVICE = ("The evaluated weights are damaged or diverged: check the checkpoint, or lower lr or "
                     "clip_max_norm if they come from training.")


def raise_if_outputs_non_finite(flags: torch.Tensor | list, outputs: dict, where: str, advice: str) -> None:
    """Raise :class:`NonFiniteOutputError` naming every non-finite output, if any (reading the flags
    synchronises: call it where a synchronisation happens anyway, or on the way to an error)."""
    bad = non_finite_outputs(flags, outputs)
    if bad:
        raise NonFiniteOutputError(where, bad, advice)
