"""What a training run prints: one line per logging step a person can read, a last line that says
whether the model is any good, and the libraries' own chatter (load reports, tokenizing and nested
evaluation bars, the Trainer's raw log dicts) kept out unless ``verbose=true``."""

from __future__ import annotations

import logging
from typing import Any

from transformers import PrinterCallback, ProgressCallback, TrainerCallback

from .metrics import collapse_reason

log = logging.getLogger("mgpp")

__all__ = ["quiet_libraries", "install_console", "step_line", "final_line", "LossWatch"]


def quiet_libraries(verbose: bool) -> None:
    """Unless ``verbose``: transformers says only errors (its load report lists the fresh classifier
    head of every fine-tuning run as MISSING, which is expected) and shows no bars of its own, and
    ``datasets`` shows no tokenizing bars."""
    if verbose:
        return
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def _number(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def step_line(step: int, max_steps: int, logs: dict[str, Any], pruning=None, main_metric: str | None = None) -> str | None:
    """``step 40/120 | loss 0.612 | lr 4.2e-05 | sparsity 0.690 (target 0.690)`` for a training log;
    ``step 40/120 | eval accuracy 0.812 | eval loss 0.43`` for an evaluation; None for anything else."""
    width = len(str(max_steps))
    head = f"step {step:>{width}}/{max_steps}"
    if "loss" in logs:
        parts = [head, f"loss {logs['loss']:.4f}"]
        if "learning_rate" in logs:
            parts.append(f"lr {logs['learning_rate']:.2e}")
        if pruning is not None and pruning.targets is not None and pruning.last_prune_step > 0:
            achieved, target = pruning.sparsity_after_prune, pruning.schedule.sparsity(step)
            when = "" if pruning.last_prune_step == step else f" at step {pruning.last_prune_step}"
            parts.append(f"sparsity {achieved:.3f}{when} (target {target:.3f})")
        elif pruning is not None and pruning.targets is not None and getattr(pruning, "mask", None) is not None:
            parts.append(f"sparsity {pruning.sparsity_after_prune:.3f} (fixed mask)")  # sparse transfer
        return " | ".join(parts)
    evals = {k[len("eval_"):]: v for k, v in logs.items() if k.startswith("eval_") and isinstance(v, (int, float))
             and not k.endswith(("_runtime", "_per_second")) and "majority" not in k}
    if not evals:
        return None
    first = [k for k in evals if k == main_metric] + [k for k in evals if k not in (main_metric, "loss")]
    shown = [f"eval {k} {_number(evals[k])}" for k in first[:3]]
    if "loss" in evals:
        shown.append(f"eval loss {_number(evals['loss'])}")
    return " | ".join([head, *shown])


def final_line(metrics: dict[str, Any], main_metric: str | None, seconds: float) -> str:
    """The run's last line: its main metric, its sparsity against the target, its time, and, when the
    evaluation says so, that the model has collapsed (``mgpp.metrics.collapse_reason``)."""
    key = next((k for k in metrics if main_metric and k.endswith(main_metric) and k.startswith("eval")), None)
    parts = [f"{key.removeprefix('eval_')} {_number(metrics[key])}"] if key else []
    if "sparsity" in metrics:
        parts.append(f"sparsity {metrics['sparsity']:.4f} (target {metrics.get('target_sparsity', 0):g})")
    minutes, rest = divmod(int(round(seconds)), 60)
    parts.append(f"{minutes} min {rest} s" if minutes else f"{rest} s")
    line = "done: " + ", ".join(parts)
    why = collapse_reason(metrics)
    if why:
        line += f". COLLAPSED: {why}; the run learned nothing usable (see docs/running.md, 'Collapsed runs')"
    return line


class _Lines(TrainerCallback):
    """Prints :func:`step_line` for each log, through the progress bar when there is one."""

    def __init__(self, pruning, main_metric: str | None):
        self.pruning, self.main_metric = pruning, main_metric

    def _write(self, line: str) -> None:
        log.info(line)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            line = step_line(state.global_step, state.max_steps, logs, self.pruning, self.main_metric)
            if line:
                self._write(line)


class _BarAndLines(ProgressCallback, _Lines):
    """The Trainer's training bar, with our lines instead of its log dicts, and no nested evaluation bar."""

    def __init__(self, pruning, main_metric: str | None):
        ProgressCallback.__init__(self)
        _Lines.__init__(self, pruning, main_metric)

    def _write(self, line: str) -> None:
        if self.training_bar is not None:
            self.training_bar.write(line)
        else:
            log.info(line)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        pass

    on_log = _Lines.on_log


class LossWatch(TrainerCallback):
    """Warns once when the logged training loss has grown by orders of magnitude: more than ``factor``
    times the smallest of the first ``first`` logged losses (the run's starting level). The run goes on
    (the NaN/inf stop of :class:`~mgpp.callback.PruningCallback` still ends one that overflows); the
    warning names the step and what to try."""

    def __init__(self, factor: float = 100.0, first: int = 3):
        self.factor, self.first = factor, first
        self.start: list[tuple[float, int]] = []  # (loss, step) of the first logged losses
        self.warned = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if self.warned or not state.is_world_process_zero or not isinstance(loss, (int, float)) or loss != loss:
            return
        if self.start:
            reference, at = min(self.start)
            if reference > 0 and loss > self.factor * reference:
                self.warned = True
                grow = f"{loss / reference:.0f}x" if loss != float("inf") else "infinitely"
                clip = getattr(args, "max_grad_norm", None)
                log.warning(
                    "step %d: the training loss %.4g is %s its early level (%.4g at step %d): the run is diverging. "
                    "Try a lower trainer.learning_rate (now %.3g), gradient clipping (trainer.max_grad_norm, now %s), "
                    "or a longer warmup (trainer.warmup_steps); a NaN or inf in the gradients stops the run",
                    state.global_step, loss, grow, reference, at, getattr(args, "learning_rate", float("nan")),
                    clip if clip else "off")
                return
        if len(self.start) < self.first and loss != float("inf"):
            self.start.append((float(loss), state.global_step))


def install_console(trainer, pruning, main_metric: str | None, verbose: bool) -> None:
    """Replace the Trainer's printer (or progress bar) with ours; ``verbose`` keeps the Trainer's own. Either
    way a :class:`LossWatch` says when the loss blows up (after the step's line)."""
    if not verbose:
        if trainer.pop_callback(PrinterCallback) is not None:
            trainer.add_callback(_Lines(pruning, main_metric))
        elif trainer.pop_callback(ProgressCallback) is not None:
            trainer.add_callback(_BarAndLines(pruning, main_metric))
    trainer.add_callback(LossWatch())
