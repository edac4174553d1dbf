"""Training health: the trainer never applies an optimiser step whose loss or gradient norm is NaN or
infinite (`train/nonfinite` in its metrics); `actor_train.training_args.on_nonfinite` says what the run
does then: stop with a message naming the step and the likely cause (the default), or skip the batch,
warn and count it (`train/skipped_steps`)."""

from __future__ import annotations

import logging
import math

from vroll.config.errors import UserError
from vroll.config.numbers import USUAL_MAX
from vroll.config.schema import TrainingArgs

log = logging.getLogger(__name__)

KEY = "actor_train.training_args.on_nonfinite"


class NonFiniteStep(UserError):
    """The run stopped at a step whose loss or gradient norm was not finite; nothing of it was applied."""


def skipped(args: TrainingArgs, step: int, metrics: dict) -> bool:
    """True when the trainer refused this optimiser step and the run skips it; raises NonFiniteStep in
    stop mode. `metrics` is what `Trainer.train_step` returned."""
    if not any(v for k, v in metrics.items() if k.endswith("/nonfinite")):
        return False
    bad = ", ".join(f"{k} {v:g}" for k, v in metrics.items()
                    if isinstance(v, float) and not math.isfinite(v))
    what = f"step {step}: the loss or gradient norm is not finite ({bad}); the optimiser step was not applied"
    if args.on_nonfinite == "skip":
        log.warning("%s, the batch is skipped (%s: skip)", what, KEY)
        return True
    raise NonFiniteStep(f"{what} and the run stops (its weights are not saved). {likely_cause(args)} "
                        f"To skip such batches instead, set {KEY}: skip.")


def likely_cause(args: TrainingArgs) -> str:
    high, _ = USUAL_MAX["training_args.learning_rate"]
    if args.learning_rate > high:
        return (f"Likely cause: actor_train.training_args.learning_rate {args.learning_rate:g} is far too high "
                "(usual values are 1e-7 to 1e-3).")
    return (f"Likely causes: a learning rate too high for this model (actor_train.training_args.learning_rate "
            f"{args.learning_rate:g}), weights that already hold NaN or inf (the model or checkpoint loaded), "
            "or a loss term that divides by zero.")
