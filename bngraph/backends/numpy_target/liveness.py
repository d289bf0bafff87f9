"""Moved to :mod:`bngraph.backends.liveness`: buffer sharing is part of the lowering plan, for every
target (``Plan.slots``). These names stay for code that imported them from here."""
from ..liveness import live_ranges, share

__all__ = ["live_ranges", "share"]
