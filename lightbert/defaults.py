"""Training settings fitted to the data when the user leaves them unset.

Fixed defaults undertrain small data: two epochs of batch 32 over 4,249 STS-B pairs are 266 optimizer steps, too few
for the head and the encoder to settle (README, "Training settings fitted to the data", has the measurements behind
the values here). So ``lightbert fit`` chooses, from the number of training examples, whatever the user did not set:

- batch size: 16 below ``SMALL_DATA`` training examples (more, smaller steps), else 32;
- learning rate: 8e-5 below ``SMALL_DATA`` examples, else 5e-5;
- epochs: the fewest, at least 2 and at most ``MAX_EPOCHS``, that make ``MIN_STEPS`` optimizer steps.

The chosen values are printed at the start of ``fit`` and recorded in the run's ``config.yaml`` and checkpoint, so a
run can be repeated with them set explicitly.
"""

from __future__ import annotations

import math

SMALL_DATA = 10_000  # training examples
MIN_STEPS = 1_200  # optimizer steps that the fitted number of epochs reaches
MIN_EPOCHS, MAX_EPOCHS = 2, 10


def fitted_batch_size(examples: int) -> int:
    """Texts per training batch for ``examples`` training examples."""
    return 16 if examples < SMALL_DATA else 32


def fitted_learning_rate(examples: int) -> float:
    """AdamW's peak learning rate for ``examples`` training examples."""
    return 8e-5 if examples < SMALL_DATA else 5e-5


def fitted_epochs(examples: int, batch_size: int, processes: int = 1, accumulate: int = 1) -> int:
    """The fewest epochs (within ``MIN_EPOCHS``..``MAX_EPOCHS``) that make ``MIN_STEPS`` optimizer steps, with
    ``processes`` processes sharing each global batch and ``accumulate`` batches per optimizer step."""
    steps_per_epoch = max(1, math.ceil(examples / (batch_size * processes)) // max(1, accumulate))
    return min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch)))
