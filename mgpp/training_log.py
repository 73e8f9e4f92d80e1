"""What a run shows on its dashboards while it trains (``mgpp.report`` makes tables and figures
after): the Trainer's logs under ``train/`` and ``eval/``, the pruning callback's metrics under
``pruning/``, and every N steps the weight histograms and the per-layer sparsity (a table, and a
scalar per layer under ``sparsity/`` so that it plots over time)."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor
from transformers import TrainerCallback

from .callback import PruningCallback
from .loggers import Histogram, MetricLogger
from .run_folder import LAYER_COLUMNS, dashboard_key

__all__ = ["weight_histogram", "log_magnitude_histogram", "layer_table", "TrainingLogCallback"]

#: the Trainer's end-of-training log (runtime, throughput, mean loss): a summary, not a step
_TRAIN_SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss",
                       "total_flos")


def _max_abs(params: Sequence[Tensor]) -> float:
    return float(torch.stack(torch._foreach_norm([p.detach().float() for p in params], float("inf"))).max())


@torch.no_grad()
def _nonzero_histogram(params: Sequence[Tensor], bins: int, lo: float, hi: float,
                       transform: Callable[[Tensor], Tensor]) -> Histogram:
    """Histogram over ``[lo, hi]`` of ``transform`` of the nonzero entries of ``params``, binned on their device."""
    device = params[0].device
    counts = torch.zeros(bins, dtype=torch.float64, device=device)
    stats = torch.zeros(3, dtype=torch.float64, device=device)  # num, sum, sum of squares
    low, high = torch.tensor(float("inf")), torch.tensor(float("-inf"))
    for p in params:
        values = p.detach().float()
        values = transform(values[values != 0])
        if values.numel() == 0:
            continue
        counts += torch.histc(values, bins=bins, min=lo, max=hi).double()
        stats += torch.stack([torch.tensor(values.numel(), device=device, dtype=torch.float64),
                              values.double().sum(), values.double().square().sum()])
        low, high = torch.minimum(low, values.min().cpu()), torch.maximum(high, values.max().cpu())
    num, total, squares = stats.tolist()
    edges = torch.linspace(lo, hi, bins + 1).tolist()
    return Histogram(counts=[int(c) for c in counts.tolist()], edges=edges, num=int(num), sum=total,
                     sum_squares=squares, min=float(low) if num else 0.0, max=float(high) if num else 0.0)


def weight_histogram(params: Sequence[Tensor], bins: int = 64) -> Histogram:
    """Histogram of the nonzero entries of ``params`` over [-max|w|, max|w|]."""
    limit = _max_abs(params) or 1.0
    return _nonzero_histogram(params, bins, -limit, limit, lambda values: values)


def log_magnitude_histogram(params: Sequence[Tensor], bins: int = 64, low: float = 1e-8) -> Histogram:
    """Histogram of ``log10 |w|`` over the nonzero entries of ``params``, on ``[log10 low, log10 max|w|]``.

    Linear bins put nearly all weights in the two bins around zero; log-magnitude bins show how
    far the survivors of pruning sit from zero, the comparison of the paper's Fig. 2a. Edges and
    statistics are in log10 units; magnitudes below ``low`` count in the first bin.
    """
    hi = math.log10(max(_max_abs(params), low * 10))
    return _nonzero_histogram(params, bins, math.log10(low), hi, lambda values: values.abs().clamp_min(low).log10())


def layer_table(pruning: PruningCallback) -> list[list]:
    """Rows ``(parameter, weights, zeros, sparsity)`` for every target tensor."""
    targets = pruning.targets
    return [[name, p.numel(), zeros, round(zeros / p.numel(), 6)]
            for name, p, zeros in zip(targets.names, targets.params, targets.zeros_per_tensor())]


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
        # histograms and per-layer tables of sharded targets would show rank 0's shards only: not logged
        if self.histogram_every > 0 and state.global_step % self.histogram_every == 0 and state.is_world_process_zero \
                and self.pruning.group is None:
            self.log_weights(state.global_step)

    def log_weights(self, step: int) -> list[list]:
        """Log the weight histograms, the per-layer table and per-layer scalars; returns the table's rows."""
        params = self.pruning.targets.params
        self.logger.log_histogram("weights/nonzero_targets", weight_histogram(params, self.bins), step)
        self.logger.log_histogram("weights/nonzero_log10_magnitude", log_magnitude_histogram(params, self.bins), step)
        rows = layer_table(self.pruning)
        self.logger.log_table("sparsity/per_layer", LAYER_COLUMNS, rows, step)
        self.logger.log({f"sparsity/{name}": sparsity for name, _, _, sparsity in rows}, step)
        return rows
