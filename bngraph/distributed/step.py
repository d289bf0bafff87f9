"""The training step of one replica: the model's own step (:class:`bngraph.step.HostStep`) with one
gradient hook, and its refusals agreed on by every replica.

Phases of a step, and what a failure in each does:

* the generated ``train_step`` (its collectives inside): a rank that raises here cannot reach the
  others, which wait in a collective: it ends the job with one line (the others' deadlines end
  them too if it died);
* the hook: the flat gradient buffers summed over the replicas (bucketed), then the checks (loss,
  gradients, running statistics), then one agreement: a step refused on one rank is refused on
  all, each raising the same error naming the rank;
* the update: the same on every replica (the same params, gradients and optimizer state), so
  params stay bit-identical; the debug mode (``check_identical``) compares their checksums.
"""
from __future__ import annotations

from .comm import DistributedError


def replicated_run(step, X, y, optimizer) -> float:
    ctx = step.context
    rep = ctx.replicas
    phase = ["program"]

    def hook(stage):
        if stage == "gradients":
            phase[0] = "checks"
            for buf in ctx.grads.buffers.values():  # the gradient hook: one allreduce of each flat buffer
                rep.allreduce_inplace(buf)
        else:
            phase[0] = "agreed"  # what agree raises is already every rank's verdict
            rep.agree(None)
            phase[0] = "update"

    try:
        loss = step._run(X, y, optimizer, hook)
    except Exception as e:
        if phase[0] == "program":
            rep.fail(f"{type(e).__name__} in the training program at step {ctx.step + 1}: {e}")
        if phase[0] == "checks":
            rep.agree(e)  # raises on every rank
        raise  # the update's own error: the same on every replica
    if rep.check_identical:
        msg = rep.checksums_agree([ctx.runtime.to_numpy(b) for b in ctx.params.buffers.values()])
        if msg is not None:
            raise DistributedError(0, msg)
    return loss
