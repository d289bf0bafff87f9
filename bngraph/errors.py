"""The errors a user meets while training (the IR's own are IRError and its subclasses)."""


class DataError(ValueError):
    """Bad data given to train_step/forward/fit: says what is wrong and where (which row)."""


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN/inf; nothing was updated by that step."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; names the file and the problem."""
