"""The bridge between a :class:`~mgpp.methods.PruningMethod` and the Hugging Face ``Trainer``.

Per optimizer step ``t`` (1-based), in the Trainer's own order:

1. backward, gradient clipping (and fp16 unscaling) by the Trainer;
2. ``on_pre_optimizer_step``: ``grad += eta(t)/n * prior.grad(theta)`` on the target weights
   (fp16 gradients still carrying the loss scale, e.g. with ``max_grad_norm=0`` on older
   Trainers, are unscaled first, so the prior never meets a scaled gradient);
3. ``optimizer.step()``;
4. ``on_optimizer_step``: prune to ``sparsity(t)`` if the schedule says so, freeze or
   re-apply a fixed mask. Just before each prune, the weights the previous prune zeroed are
   measured (``pruning/regrowth_*``): how far AdamW carried them off zero in between.

The callback never asks which method it runs: every decision comes from the
method's prior, schedule and pruner.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from typing import Any

import torch
from transformers import TrainerCallback

from .checkpoints import checkpoint_folder, newest_sealed_checkpoint
from .distributed import local_shards
from .methods import PruningMethod
from .pruning import FixedMask, Targets, reduce_over_ranks
from .run_folder import SCHEDULE_STATE_FILE

log = logging.getLogger(__name__)

__all__ = ["PruningCallback"]

PREFIX = "pruning/"


class PruningCallback(TrainerCallback):
    """Adds the prior gradient and prunes, following ``method``.

    Args:
        method: prior, schedule, pruner and target selector to use.
        train_size: ``n`` of Eq. 5, the number of training examples; the prior
            gradient is scaled by ``eta(t) / n`` as the log-posterior is a sum over them.
        track_regrowth: keep which weights each prune zeroed (one byte per target weight)
            to measure their regrowth before the next prune; off for the largest models.
    """

    def __init__(self, method: PruningMethod, train_size: int, track_regrowth: bool = True):
        if isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 1:
            raise ValueError(f"train_size must be the positive number of training examples, got {train_size!r}")
        self.method = method
        self.train_size = train_size
        self.targets: Targets | None = None
        self.group = None  # the process group of sharded targets (FSDP2), else None
        self.sharded = None  # the sharded (DTensor) targets, whose gradients the prior reads
        self.schedule = method.schedule
        self.mask: FixedMask | None = None
        self.step = 0  # index of the last optimizer step the callback acted on
        self.threshold: float | None = None
        self.last_prune_step = 0
        self.sparsity_after_prune = 0.0
        self.kept_min: float | None = None  # smallest surviving |theta| right after the last prune
        self.prior = method.prior
        self.prior_weight = 0.0
        self.track_regrowth = track_regrowth
        self._zeroed: list | None = None  # per target tensor: True where the last prune left a zero
        self.regrowth: dict[str, float] = {}
        #: after t_f (a prune every step) regrowth is measured only into the Trainer's logging steps, where it
        #: is read: keeping and measuring the zeros of every prune cost 5% of a step. 1: at every prune.
        self.regrowth_every = 1
        self.trainer = None

    # -- setup -------------------------------------------------------------------------------
    def attach(self, trainer) -> "PruningCallback":
        """``trainer.add_callback(self)``, keeping the trainer: its accelerator unscales fp16 gradients
        before the prior is added. (Logging asks :meth:`metrics`; see ``mgpp.training_log``.)"""
        trainer.add_callback(self)
        self.trainer = trainer
        return self

    def setup(self, model, total_steps: int, completed_steps: int = 0) -> None:
        """Select targets and bind the schedule; called by ``on_train_begin`` (public for custom loops)."""
        selected = self.method.targets.select(model)
        log.info("pruning targets: %s", selected.summary())
        # FSDP2: the targets are DTensors; the engine works on this rank's dim-0 shards, and the pruner
        # selects over every rank's shards through ``group`` (see mgpp.distributed)
        with torch.no_grad():
            local, self.group = local_shards(selected.params)
        self.sharded = selected.params if self.group is not None else None
        self.targets = Targets(selected.names, local, selected.input_dims) if self.group is not None else selected
        self.method.pruner.check_targets(self.targets.names, self.targets.params, self.targets.input_dims)
        schedule = self.method.schedule
        saved = self._saved_calibration(completed_steps)
        if saved:  # resuming: the calibration of the original start, not one of the half-trained weights
            schedule = dataclasses.replace(schedule, **saved)
            log.info("schedule calibration from the checkpoint: %s", saved)
        if self.group is not None and getattr(schedule, "sigma0_sq_init", 0) is None:
            raise ValueError("prior annealing calibrates sigma0_sq_init on the weights, which sharded training splits "
                             "across ranks: set schedule.sigma0_sq_init explicitly (e.g. from a 1-process calibration)")
        self.schedule = schedule.bind(total_steps, self.method.prior, self.targets.params, self.method.pruner)
        self.step = completed_steps
        if completed_steps > 0:  # resuming: a checkpoint with damaged weights must not train on as NaN
            bad = [n for n, p in zip(self.targets.names, self.targets.params) if not bool(torch.isfinite(p).all())]
            if bad:
                raise ValueError(f"the checkpoint of step {completed_steps} holds non-finite weights ({bad[0]} and "
                                 f"{len(bad) - 1} more): it is damaged; remove it to resume from an earlier one, "
                                 "or rerun with resume=false")
        # A mask fixed before training (sparse transfer), or resuming past a mask freeze: the
        # pruned weights are the zeros of the weights at hand.
        if any(self.schedule.fixes_mask_at(t) for t in range(0, completed_steps + 1)):
            self.mask = FixedMask(self.targets.params)
            self.sparsity_after_prune = self.sparsity()  # the frozen zeros: what the curves report from here
            log.info("fixed mask: %.4f of the target weights stay zero", self.targets.sparsity())

    def _saved_calibration(self, completed_steps: int) -> dict:
        if completed_steps <= 0 or self.trainer is None:
            return {}
        path = checkpoint_folder(self.trainer.args.output_dir, completed_steps) / SCHEDULE_STATE_FILE
        if not path.is_file():
            return {}
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def on_save(self, args, state, control, **kwargs):
        """Keep the schedule's calibration with the checkpoint just written."""
        calibration = self.schedule.calibration() if self.targets is not None else {}
        folder = checkpoint_folder(args.output_dir, state.global_step)
        if calibration and folder.is_dir():
            with open(folder / SCHEDULE_STATE_FILE, "w", encoding="utf-8") as f:
                json.dump(calibration, f)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.setup(model, state.max_steps, state.global_step)
        self.regrowth_every = max(1, int(state.logging_steps or 1))

    # -- per step ----------------------------------------------------------------------------
    def _grads(self) -> list:
        """The targets' gradients, as this rank's shards when the targets are sharded."""
        if self.sharded is None:
            return [p.grad for p in self.targets.params]
        return [None if p.grad is None else p.grad.to_local() for p in self.sharded]

    def sparsity(self) -> float:
        """Fraction of exact zeros over all target weights (summed over ranks when sharded)."""
        if self.group is None:
            return self.targets.sparsity()
        counts = torch.tensor([sum(self.targets.zeros_per_tensor()), self.targets.numel], dtype=torch.float64,
                              device=self.targets.params[0].device)
        zeros, numel = reduce_over_ranks(counts, self.group).tolist()
        return zeros / max(numel, 1)

    def _over_ranks(self, value: float, op: str) -> float:
        """``value`` reduced over the ranks of sharded targets (``min`` ignores ranks whose shards are all zero)."""
        if self.group is None:
            return value
        if op == "min" and value <= 0:
            value = math.inf
        t = torch.tensor([value], dtype=torch.float64, device=self.targets.params[0].device)
        result = float(reduce_over_ranks(t, self.group, op))
        return 0.0 if math.isinf(result) else result

    def add_prior_grad(self, t: int) -> None:
        """Step 2 above, for optimizer step ``t``."""
        self.prior = self.schedule.prior_at(t, self.method.prior)
        self.prior_weight = self.schedule.prior_weight(t)
        params = self.targets.params
        grads = self._grads()
        if any(g is None for g in grads):  # e.g. a frozen or unused layer
            params = [p for p, g in zip(params, grads) if g is not None]
            grads = [g for g in grads if g is not None]
        if params:
            self.prior.add_grad_(params, grads, self.prior_weight / self.train_size)

    def prune(self, t: int) -> None:
        """Step 4 above, for optimizer step ``t``."""
        self.step = t
        params = self.targets.params
        if self.schedule.prunes_at(t):
            if self._zeroed is not None:
                self.regrowth = self.measure_regrowth()
            result = self.method.pruner.prune_(params, self.schedule.sparsity(t), self.targets.names, self.group)
            self.threshold = result.threshold
            self.last_prune_step = t
            # the pruned fraction (weights already at exactly zero among the kept ones aside)
            self.sparsity_after_prune = result.num_pruned / max(result.numel, 1)
            self._zeroed = [p.detach() == 0 for p in params] if self._regrowth_wanted(t) else None
        if self.schedule.fixes_mask_at(t):
            self.mask = FixedMask(params)
        if self.mask is not None:
            self.mask.apply_(params)

    def _regrowth_wanted(self, t: int) -> bool:
        """Whether to keep the zeros of the prune at step ``t`` to measure their regrowth at the next one: at
        every prune of the cubic phase (prunes are ``prune_every`` apart), after ``t_f`` (a prune every step)
        only when the next step is a logging step."""
        if not self.track_regrowth:
            return False
        return not self.schedule.prunes_at(t + 1) or (t + 1) % self.regrowth_every == 0

    @torch.no_grad()
    def measure_regrowth(self) -> dict[str, float]:
        """Mean and max |theta| (and the fraction that is nonzero) of the weights the previous
        prune zeroed, now: what the optimizer's momentum made of them since."""
        total, count, largest, moved = 0.0, 0, 0.0, 0
        for p, zeroed in zip(self.targets.params, self._zeroed):
            magnitude = torch.where(zeroed, p.detach().abs(), 0).float()
            total += float(magnitude.sum(dtype=torch.float64))
            count += int(zeroed.sum())
            moved += int((magnitude > 0).sum())
            largest = max(largest, float(magnitude.max()) if magnitude.numel() else 0.0)
        if self.group is not None:  # sharded: over every rank's shards
            sums = torch.tensor([total, count, moved], dtype=torch.float64, device=self.targets.params[0].device)
            total, count, moved = reduce_over_ranks(sums, self.group).tolist()
            largest = self._over_ranks(largest, "max")
        return {"regrowth_mean": total / max(count, 1), "regrowth_max": largest,
                "regrowth_nonzero_fraction": moved / max(count, 1)}

    def _unscale_fp16_gradients(self) -> None:
        """Unscale fp16 gradients that still carry the loss scale (Trainer versions that unscale only
        when they clip). Adding the prior to scaled gradients would divide its strength by the scale."""
        accelerator = getattr(self.trainer, "accelerator", None)
        scaler = getattr(accelerator, "scaler", None)
        if scaler is None or not scaler.is_enabled() or self.trainer.optimizer is None:
            return
        from torch.amp.grad_scaler import OptState

        optimizer = self.trainer.optimizer
        while hasattr(optimizer, "optimizer"):  # accelerate's AcceleratedOptimizer wraps the torch one
            optimizer = optimizer.optimizer
        if scaler._per_optimizer_states[id(optimizer)]["stage"] is not OptState.UNSCALED:
            accelerator.unscale_gradients()

    @torch.no_grad()
    def check_finite_gradients(self, t: int) -> None:
        """Stop at the step a NaN or inf appears in the target weights' gradients (a diverging loss,
        an overflow), before the optimizer writes it into the weights: one norm per tensor."""
        grads = [g for g in self._grads() if g is not None]
        if not grads:
            return
        norms = torch.stack([n.float() for n in torch._foreach_norm(grads)])
        finite = bool(torch.isfinite(norms).all())
        if self.group is not None:  # a NaN in one rank's shard stops every rank, not just that one
            finite = self._over_ranks(0.0 if finite else 1.0, "sum") == 0.0
        if not finite:
            bad = [name for name, n in zip(self.targets.names, norms.tolist()) if not math.isfinite(n)] \
                or ["a tensor of another rank's shards"]
            checkpoint = ""
            if self.trainer is not None:
                last = newest_sealed_checkpoint(self.trainer.args.output_dir)  # not verified: that reads every file
                checkpoint = f"; the last sealed checkpoint is {last}" if last else "; no checkpoint was sealed"
            raise FloatingPointError(
                f"non-finite gradients at optimizer step {t} in {len(bad)} target tensor(s), e.g. {bad[0]}: the loss "
                f"diverged{checkpoint}. Try a lower trainer.learning_rate, gradient clipping (trainer.max_grad_norm), "
                "float32 instead of fp16, or a larger train_size (a weaker prior)")

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._unscale_fp16_gradients()
        self.check_finite_gradients(state.global_step + 1)
        self.add_prior_grad(state.global_step + 1)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.prune(state.global_step + 1)

    # -- what it exposes -----------------------------------------------------------------------
    def pruned_at(self, t: int) -> bool:
        """Whether the pruner ran after optimizer step ``t``: the moment a sparsity curve is exact."""
        return t > 0 and self.last_prune_step == t

    @property
    def zeros_are_the_pruners(self) -> bool:
        """Whether the weights' exact zeros are now what pruning left: under a fixed mask (PA after its
        prune, sparse transfer, a run resumed past the freeze) they stay so between steps."""
        return self.mask is not None

    def prune_metrics(self) -> dict[str, float]:
        """The scalars of the last prune: its target, the fraction it zeroed, its threshold and the
        smallest survivor. Keys of a prune that has not happened yet are left out, not logged as 0
        (a 0 would read as a value, and breaks a log-scale plot)."""
        t = self.step
        # right after a prune, or under a fixed mask, the smallest nonzero weight is the boundary
        if self.pruned_at(t) or (self.mask is not None and self.last_prune_step > 0):
            self.kept_min = self._over_ranks(self.targets.min_nonzero_magnitude(), "min")
        out = {PREFIX + "target_sparsity": self.schedule.sparsity(t) if t > 0 else 0.0}
        if self.last_prune_step > 0 or self.mask is not None:
            out[PREFIX + "sparsity_after_last_prune"] = self.sparsity_after_prune
            if self.threshold is not None:
                out[PREFIX + "threshold"] = self.threshold
            # The magnitude a weight needed to survive the last prune (Fig. 2b). ``threshold``, the
            # largest pruned score, reads lower once momentum regrows pruned weights between steps.
            if self.kept_min is not None and self.kept_min > 0:
                out[PREFIX + "kept_min_magnitude"] = self.kept_min
        return out

    def metrics(self) -> dict[str, float]:
        """Scalars for the logs: :meth:`prune_metrics`, the fraction of exact zeros now, the prior's
        crossover, eta and penalty, the regrowth between prunes.

        The zero count and the penalty take a pass over the target weights; call on logging steps,
        not every step.
        """
        crossover = self.prior.crossover()
        scale = self.prior_weight / self.train_size
        return {
            **self.prune_metrics(),
            # exact zeros now: between the prunes of the cubic phase, momentum moves some off zero
            PREFIX + "zero_fraction_now": self.sparsity(),
            PREFIX + "prior_crossover": crossover if crossover is not None else math.nan,
            PREFIX + "prior_weight": self.prior_weight,
            # The prior's term of the per-example objective (Eq. 3), eta/n * sum(-log pi(theta)),
            # measured from the all-zero model (see Prior.penalty): the loss's scale. Under the MGP each
            # nonzero weight beyond the spike costs about log(spike/slab peak)/n, so it is large.
            PREFIX + "prior_penalty": self._over_ranks(scale * self.prior.penalty(self.targets.params), "sum")
            if self.prior.active else 0.0,
            # how far the weights zeroed by the previous prune had regrown before the latest one
            **{PREFIX + k: v for k, v in self.regrowth.items()},
        }
