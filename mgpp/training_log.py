"""What a run shows on its dashboards while it trains (``mgpp.report`` makes tables and figures
after): the Trainer's logs under ``train/`` and ``eval/``, the pruning callback's metrics under
``pruning/``, right after each prune (one in ``prune_every`` after ``t_f``) the per-layer sparsity the
pruner left (a scalar per layer under ``sparsity_after_prune/``, so that it plots over time), and every
N steps the weight histograms and a per-layer table of the exact zeros at that step."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor
from transformers import TrainerCallback

from .callback import PruningCallback
from .loggers import Histogram, MetricLogger
from .pruning import reduce_over_ranks
from .run_folder import (LAYER_COLUMNS, LAYER_SPARSITY, LAYER_TABLE, LOG_MAGNITUDE_HISTOGRAM, NONZERO_HISTOGRAM,
                         dashboard_key)

__all__ = ["weight_histogram", "log_magnitude_histogram", "layer_table", "TrainingLogCallback"]

#: the Trainer's end-of-training log (runtime, throughput, mean loss): a summary, not a step
_TRAIN_SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss",
                       "total_flos")


def _max_abs(params: Sequence[Tensor], group=None) -> float:
    present = [p.detach().float() for p in params if p.numel()]  # a rank may hold an empty shard
    local = torch.stack(torch._foreach_norm(present, float("inf"))).max().reshape(1) if present \
        else torch.zeros(1, device=params[0].device)
    return float(reduce_over_ranks(local, group, "max"))


@torch.no_grad()
def _nonzero_histogram(params: Sequence[Tensor], bins: int, lo: float, hi: float,
                       transform: Callable[[Tensor], Tensor], group=None) -> Histogram:
    """Histogram over ``[lo, hi]`` of ``transform`` of the nonzero entries of ``params``, binned on their
    device; with a process ``group`` (sharded targets), over every rank's shards (two all-reduces)."""
    device = params[0].device
    counts = torch.zeros(bins + 3, dtype=torch.float64, device=device)  # the bins, then num, sum, sum of squares
    extremes = torch.tensor([float("inf"), float("inf")], dtype=torch.float64, device=device)  # min, -max
    for p in params:
        values = p.detach().float()
        values = transform(values[values != 0])
        if values.numel() == 0:
            continue
        counts[:bins] += torch.histc(values, bins=bins, min=lo, max=hi).double()
        counts[bins:] += torch.stack([torch.tensor(values.numel(), device=device, dtype=torch.float64),
                                      values.double().sum(), values.double().square().sum()])
        extremes = torch.minimum(extremes, torch.stack([values.min(), -values.max()]).double())
    reduce_over_ranks(counts, group)
    reduce_over_ranks(extremes, group, "min")
    num, total, squares = counts[bins:].tolist()
    low, high = extremes[0].item(), -extremes[1].item()
    edges = torch.linspace(lo, hi, bins + 1).tolist()
    return Histogram(counts=[int(c) for c in counts[:bins].tolist()], edges=edges, num=int(num), sum=total,
                     sum_squares=squares, min=low if num else 0.0, max=high if num else 0.0)


def weight_histogram(params: Sequence[Tensor], bins: int = 64, group=None) -> Histogram:
    """Histogram of the nonzero entries of ``params`` over [-max|w|, max|w|] (over all ranks' shards
    with a process ``group``)."""
    limit = _max_abs(params, group) or 1.0
    return _nonzero_histogram(params, bins, -limit, limit, lambda values: values, group)


def log_magnitude_histogram(params: Sequence[Tensor], bins: int = 64, low: float = 1e-8, group=None) -> Histogram:
    """Histogram of ``log10 |w|`` over the nonzero entries of ``params``, on ``[log10 low, log10 max|w|]``.

    Linear bins put nearly all weights in the two bins around zero; log-magnitude bins show how
    far the survivors of pruning sit from zero, the comparison of the paper's Fig. 2a. Edges and
    statistics are in log10 units; magnitudes below ``low`` count in the first bin.
    """
    hi = math.log10(max(_max_abs(params, group), low * 10))
    return _nonzero_histogram(params, bins, math.log10(low), hi,
                              lambda values: values.abs().clamp_min(low).log10(), group)


def layer_table(pruning: PruningCallback) -> list[list]:
    """Rows ``(parameter, weights, zeros, sparsity)`` for every target tensor (whole tensors: the
    shards' counts summed over the ranks when the targets are sharded)."""
    targets = pruning.targets
    counts = torch.tensor([[p.numel() for p in targets.params], targets.zeros_per_tensor()], dtype=torch.int64,
                          device=targets.params[0].device)
    numels, zeros = reduce_over_ranks(counts, pruning.group).tolist()
    return [[name, n, z, round(z / n, 6)] for name, n, z in zip(targets.names, numels, zeros)]


class TrainingLogCallback(TrainerCallback):
    """Sends a run's metrics to ``logger`` (any :class:`~mgpp.loggers.MetricLogger`).

    At each Trainer log it asks ``pruning`` for its metrics (nothing is inserted into the Trainer's
    own logs), so the order of the callbacks does not matter. Every step is logged once: the
    Trainer's end-of-training summary goes to :attr:`summary`, for the loggers' final summary.
    """

    def __init__(self, logger: MetricLogger, pruning: PruningCallback, histogram_every: int = 100,
                 histogram_bins: int = 64):
        self.logger, self.pruning = logger, pruning
        self.histogram_every, self.bins = histogram_every, histogram_bins
        self.summary: dict[str, float] = {}
        self._last_prune_logged = -(10**9)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or any(k in logs for k in _TRAIN_SUMMARY_KEYS):
            if logs and state.is_world_process_zero:  # totals: train_summary/loss is the mean over the run
                self.summary |= {"train_summary/" + k.removeprefix("train_"): v for k, v in logs.items()
                                 if k != "epoch"}
            return
        pruning_state = {}
        if "loss" in logs and self.pruning.targets is not None:  # a training log: the pruning state with it
            # sharded targets: every rank takes part in the metrics' all-reduces; only rank 0 logs them
            if state.is_world_process_zero or self.pruning.group is not None:
                pruning_state = self.pruning.metrics()
        if state.is_world_process_zero:
            self.logger.log({dashboard_key(k): v for k, v in logs.items()} | pruning_state, state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        t = state.global_step
        # sharded targets: every rank takes part in the reductions, rank 0 logs
        takes_part = state.is_world_process_zero or self.pruning.group is not None
        if not takes_part or self.pruning.targets is None:
            return
        if self.pruning.pruned_at(t) and (control.should_log or t - self._last_prune_logged >= self._prune_log_gap):
            self._log_prune(t, with_scalars=not control.should_log, log=state.is_world_process_zero)
        if self.histogram_every > 0 and t % self.histogram_every == 0:
            self.log_weights(t, log=state.is_world_process_zero)

    @property
    def _prune_log_gap(self) -> int:
        """Steps between logged prunes: every prune of the cubic phase (each ``prune_every`` steps);
        after ``t_f``, where every step prunes, one in ``prune_every`` (and each logging step)."""
        return max(1, int(getattr(self.pruning.schedule, "prune_every", 1) or 1))

    def _log_prune(self, step: int, with_scalars: bool, log: bool = True) -> None:
        """Right after a prune: per-layer sparsity as the pruner left it (``sparsity_after_prune/<layer>``)
        and, unless the Trainer logs this step anyway (its log carries them), the prune's scalars."""
        self._last_prune_logged = step
        scalars = self.pruning.prune_metrics() if with_scalars else {}
        rows = layer_table(self.pruning)
        if log:
            self.logger.log(scalars | {LAYER_SPARSITY + name: sparsity for name, _, _, sparsity in rows}, step)

    def log_weights(self, step: int, log: bool = True) -> list[list]:
        """The weight histograms and the per-layer table (exact zeros now), logged when ``log`` (under
        sharded training every rank computes them, rank 0 logs); returns the table's rows. The
        per-layer scalars go with them only where the zeros are the pruner's: right after a prune, or
        under a fixed mask (between the prunes of the cubic phase momentum moves pruned weights off
        zero, and a count of exact zeros would read 0 while the target is 0.9)."""
        params, group = self.pruning.targets.params, self.pruning.group
        histograms = {NONZERO_HISTOGRAM: weight_histogram(params, self.bins, group),
                      LOG_MAGNITUDE_HISTOGRAM: log_magnitude_histogram(params, self.bins, group=group)}
        rows = layer_table(self.pruning)
        exact = self.pruning.pruned_at(step) or self.pruning.zeros_are_the_pruners
        if log:
            for name, histogram in histograms.items():
                self.logger.log_histogram(name, histogram, step)
            self.logger.log_table(LAYER_TABLE, LAYER_COLUMNS, rows, step)
            if exact and self._last_prune_logged != step:  # (already logged right after this step's prune)
                self.logger.log({LAYER_SPARSITY + name: sparsity for name, _, _, sparsity in rows}, step)
        return rows
