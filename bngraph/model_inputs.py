"""What a model takes (``model.inputs``): its feature and label inputs, and the checks every entry
point runs on data before anything changes (the model, the training loop and the command line)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .datacheck import check_x, check_y
from .ops import OPS


@dataclass(frozen=True)
class ModelInputs:
    """What a model takes (``model.inputs``): the feature and label inputs, and the checks every
    entry point runs on data before anything changes (the training loop and the command line too)."""

    x: str                        # the feature input's name
    y: str                        # the labels' (or targets') input's name
    n_features: int | tuple       # features per example, or a spatial input's (C, L) / (C, H, W)
    n_outputs: int
    classes: int | None           # None for mse / sigmoid_bce
    dtype: np.dtype
    loss: str                     # the loss op
    ignore_index: int | None
    batch_statistics: bool        # a training batch needs at least 2 examples

    def check_x(self, X, where) -> np.ndarray:
        """X checked as the model will see it: cast to its dtype (and returned so)."""
        return check_x(X, self.n_features, where, self.x, dtype=self.dtype)

    def check_y(self, y, m, where) -> np.ndarray:
        """Labels, or targets cast to the model's dtype and inside the loss's domain (BCE: [0, 1])."""
        return check_y(y, m, where, self.classes, self.n_outputs, dtype=self.dtype,
                       target_range=OPS[self.loss].target_range, loss=self.loss, ignore_index=self.ignore_index)

    def layout_feeds(self, X, y) -> dict:
        """input name -> (host array in the compiler's (features, m) layout, its dtype)."""
        # (m, features) -> (features, m); a spatial (m, C, d...) -> (C, m, d...): one transpose
        feeds = {self.x: (X.T if X.ndim == 2 else np.swapaxes(X, 0, 1), self.dtype)}
        if y is not None:
            feeds[self.y] = (y, np.int64) if self.classes is not None else (y.T, self.dtype)
        return feeds
