"""An optimizer's update on a snapshot, all or nothing (:class:`bngraph.step.HostStep`).

A built-in optimizer's fused update runs on the live params without a copy when the step is
proved not to overflow (:mod:`bngraph.optim.bounds`; a copy of params and slots every step would
cost the CPU step ~15%). Anything else -- a built-in's step that is not proved, your ``update`` or
``step``, a protocol object -- may raise or write NaN/inf halfway through, so it runs here on a
snapshot: the flat params are copied and, when it has ``state_dict``/``load_state_dict``, its
state taken (its slots copied); if it raises (a KeyboardInterrupt included) or leaves a param, or
a slot of a bound Optimizer, NaN/inf, both are restored. Arrays move only through the array module of the
params (``copy_array``), never through NumPy directly.
"""
from __future__ import annotations

from .errors import TrainingDiverged
from .optim.base import copy_array, update_message


def update_on_snapshot(ctx, optimizer, n: int):
    """``optimizer``'s update of the flat params of ``ctx`` (a :class:`bngraph.step.StepContext`) at
    step ``n``, rolled back if anything goes wrong."""
    P, G = ctx.params, ctx.grads
    saved = {dt: copy_array(b) for dt, b in P.buffers.items()}
    restorable = callable(getattr(optimizer, "state_dict", None)) and callable(
        getattr(optimizer, "load_state_dict", None))
    opt_state = optimizer.state_dict() if restorable else None
    try:
        if callable(getattr(optimizer, "step_flat", None)):  # an Optimizer subclass: bound to the layout
            if getattr(optimizer, "layout", None) is not ctx.layout:
                ctx.bind(optimizer)
            optimizer.step_flat(P, G)
        else:  # the protocol: name -> array dicts, params updated in place
            params = dict(P.views)
            optimizer.step(params, dict(G.views))
            _copy_rebound(params, P.views)
        bad, slot = ctx.first_nonfinite(P), None
        if bad is None:
            slot, bad = ctx.first_nonfinite_slot(optimizer) or (None, None)
        if bad is not None:
            raise TrainingDiverged(update_message(n, bad, slot, ctx.dtype, lambda: ctx.update_cause(optimizer, bad)))
    except BaseException:
        for dt, b in saved.items():
            P.buffers[dt][...] = b
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)
        raise


def _copy_rebound(params: dict, views: dict):
    """An entry the optimizer rebound (``params[k] = new array``) instead of updating in place is
    copied into the param's view (a wrong shape is refused)."""
    for k, v in params.items():
        view = views[k]
        if v is not view:
            shape = tuple(getattr(v, "shape", ()))
            if shape != tuple(view.shape):
                raise ValueError(f"the optimizer's step() set params[{k!r}] to an array of shape {shape}, expected "
                                 f"{tuple(view.shape)}; nothing was updated")
            view[...] = v
