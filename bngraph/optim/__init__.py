"""Optimizers: SGD, RMSprop, Adam and AdamW, with PyTorch's formulas and defaults.

An optimizer updates a dict of parameter arrays *in place*, from a dict of gradients with the
same names (any array module: NumPy, CuPy, ...; the optimizer uses the arrays' own)::

    import bngraph.optim as optim
    opt = optim.Adam(lr=1e-3)
    for batch in batches:
        grads = ...                     # {"W1": dW1, "gamma1": dgamma1, "beta1": dbeta1, ...}
        opt.step(params, grads)         # params[name][...] is updated; nothing is reallocated

The protocol (all the training loop relies on; any object with these members works)::

    class Optimizer:
        lr: float                       # the loop's lr-schedule hook may set this between steps
        def step(self, params: dict[str, array], grads: dict[str, array]) -> None
        def state_dict(self) -> dict
        def load_state_dict(self, d: dict) -> None

- ``step`` updates ``params[name]`` in place, in the parameter's own dtype (float32 stays
  float32). ``grads`` has the same names; a parameter with no entry in ``grads`` is left unchanged
  and its state does not advance (like a PyTorch parameter whose ``.grad`` is None). A gradient
  for a name that is not in ``params`` is an error (checked, like shapes, before anything
  changes). The optimizer never knows whether an array is a weight matrix, a batch-norm
  ``gamma`` or a batch-norm ``beta``: they are all just parameters. The gradient arrays are
  never modified.
- ``state_dict()`` returns everything needed to resume, as copies (arrays of the slots' array
  module; a checkpoint converts them with its runtime's ``to_numpy``)::

      {"type": "Adam",                      # the class name
       "hyper": {"lr": ..., "beta1": ..., ...},   # the constructor arguments, current values
       "step": 12,                          # number of step() calls
       "slots": {"W1": {"exp_avg": array, "exp_avg_sq": array, "step": array(12)}, ...},
       "groups": [{"params": ["*.gamma"], "weight_decay": 0.0}, ...]}  # only if there are groups

- ``load_state_dict(d)`` restores all of it (hyperparameters, including ``lr``, and groups too);
  arrays are converted with the bound ``xp.asarray`` (NumPy arrays are fine).

Two more members, which a model with flat parameter buffers (:mod:`bngraph.flat`) calls; the base
class provides both, so an optimizer written against the protocol above gets them for free::

    opt.bind(layout, xp)        # once per model: every slot moves into flat buffers of layout
    opt.step_flat(P, G)         # P, G: FlatArrays of params and grads; P is updated in place

``step_flat`` of the built-ins is a few whole-buffer passes per parameter group and dtype (no loop
over parameters); for anything else it is ``step(P.views, G.views)``.

Parameter groups, as PyTorch's ``param_groups`` but chosen by name pattern::

    optim.AdamW(lr=1e-3, weight_decay=1e-2,
                groups=[{"params": ["*.gamma", "*.beta"], "weight_decay": 0.0},
                        {"params": "fc1.*", "lr": 1e-4}])

The first group with a matching pattern owns a parameter; the others use the constructor's values
(the default group). ``opt.lr = x`` sets the lr of the default group and of every group that does
not set its own. ``opt.param_groups`` lists them.

To write your own optimizer, subclass :class:`Optimizer` and implement ``update`` (one parameter
at a time; the base class handles the loop over names, groups, missing gradients, the step counter
and ``state_dict``) or override ``step`` itself. See ``docs/optimizers.md``.

Names: Adam's decay rates are ``beta1`` and ``beta2`` (PyTorch's ``betas=(beta1, beta2)``);
in this project a bare ``beta`` is the batch-norm shift parameter. The lecture's momentum
``v = beta*v + (1-beta)*dW`` is ``SGD(momentum=beta, dampening=beta)`` (except on the first step:
PyTorch, and so this module, start the buffer at the first gradient rather than at zero), and the
lecture's RMSprop ``beta`` is ``alpha``.
"""
import typing as _typing  # (no bare Any, Callable or annotations among bg.optim's names)

from .adam import Adam, AdamW, adam_update
from .base import Optimizer
from .recorded import RecordOptimizer
from .records import OptimizerRecord
from .rmsprop import RMSprop, rmsprop_update
from .sgd import SGD, sgd_update

__all__ = ["Optimizer", "RecordOptimizer", "OptimizerRecord", "SGD", "RMSprop", "Adam", "AdamW", "make",
           "from_state_dict", "NAMES", "TYPES", "sgd_update", "rmsprop_update", "adam_update"]


#: The built-in optimizer classes by class name (the ``"type"`` of their state dicts).
TYPES: dict[str, type[Optimizer]] = {cls.__name__: cls for cls in (SGD, RMSprop, Adam, AdamW)}

_FACTORIES: dict[str, _typing.Callable[..., Optimizer]] = {
    "sgd": SGD,
    "momentum": lambda **kw: SGD(**{"momentum": 0.9, **kw}),
    "rmsprop": RMSprop,
    "adam": Adam,
    "adamw": AdamW,
}

#: The names ``make`` accepts.
NAMES: tuple[str, ...] = tuple(_FACTORIES)


def make(name: str | Optimizer, lr: float | None = None, **kw: _typing.Any) -> Optimizer:
    """An optimizer by name: ``"sgd"``, ``"momentum"`` (SGD with ``momentum=0.9``),
    ``"rmsprop"``, ``"adam"``, ``"adamw"`` (case-insensitive). ``lr=None`` keeps the class
    default; other keyword arguments go to the constructor. An optimizer object is returned
    unchanged (so a loop can accept either)."""
    if not isinstance(name, str):
        if callable(getattr(name, "step", None)):
            if lr is not None or kw:
                raise ValueError("lr and other arguments apply only when the optimizer is "
                                 "given by name, not to an optimizer object")
            return name
        raise TypeError(f"optimizer must be a name or an optimizer object, got {name!r}")
    factory = _FACTORIES.get(name.strip().lower())
    if factory is None:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(NAMES)} "
                         f"(or pass an optimizer object)")
    if lr is not None:
        kw["lr"] = lr
    return factory(**kw)


def from_state_dict(d: dict) -> Optimizer:
    """Rebuild a built-in optimizer (SGD, RMSprop, Adam, AdamW) from its ``state_dict()``."""
    if not isinstance(d, dict) or "type" not in d:
        raise ValueError("not an optimizer state dict (no 'type' key)")
    cls = TYPES.get(d["type"])
    if cls is None:
        raise ValueError(f"unknown optimizer type {d['type']!r} (built in: "
                         f"{', '.join(TYPES)}); for your own optimizer, create it and call "
                         f"its load_state_dict(d) instead")
    opt = cls(**d.get("hyper", {}))
    opt.load_state_dict(d)
    return opt
