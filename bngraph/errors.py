"""The errors a user meets while training (the IR's own are IRError and its subclasses).

Each is one line that says what is wrong and where; the command line prints it as
``bngraph: error: ...`` with exit code 2 (all but ProgramError are ValueErrors).
"""


class DataError(ValueError):
    """Bad data given to train_step/forward/fit: says what is wrong and where (which row)."""


class TrainingDiverged(RuntimeError):
    """The loss, a gradient or (after the update) a param became NaN/inf; says what and at which step."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; names the file and the problem."""


class ModelSizeError(ValueError):
    """A model too large to allocate on this machine: refused before any allocation is tried."""


class ProgramError(RuntimeError):
    """A generated program broke its contract (e.g. a missing output); the step changed nothing."""
