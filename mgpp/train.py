"""The one training entrypoint: ``python -m mgpp.train [overrides]`` (Hydra, ``conf/train.yaml``).

``train(cfg)`` is a plain function: it fine-tunes and prunes the configured model on the
configured task with the configured method, and writes into ``cfg.output_dir``:

- ``config.yaml``        the resolved config
- ``log.jsonl``          every logged scalar, histogram and table (plus W&B/TensorBoard if enabled)
- ``metrics.json``       final eval metrics, sparsity and wall time
- ``layer_sparsity.csv`` per target tensor: weights, zeros, sparsity
- ``model/``             the pruned model and tokenizer (safetensors; ``from_pretrained`` loads it)

Runs are resumable (``resume=true``, the default): rerun into the same ``output_dir`` and a
finished run is skipped, an interrupted one continues from its last checkpoint. Sweeps with a
fixed sweep dir (the experiment files) therefore pick up where they stopped.
"""

from __future__ import annotations

import csv
import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from . import config as config_schema
from .callback import PruningCallback
from .loggers import Loggers
from .methods import PruningMethod
from .pruning import TargetSelector
from .reporting import LAYER_COLUMNS, ReportingCallback
from .tasks.mlm import save_mask

log = logging.getLogger("mgpp.train")

__all__ = ["train", "build_method", "main", "finished_metrics"]

#: written last, so its presence marks a finished run
METRICS_FILE = "metrics.json"
#: keys that may change between an interrupted run and its resumption
RESUME_IGNORES = ("output_dir", "resume", "logger", "trainer.disable_tqdm")


def build(node: DictConfig, **kwargs):
    """``instantiate(node)``, with the target's own ValueError/TypeError raised as such, prefixed
    by the config node (``prior: lam ... got lam=1.5``) instead of wrapped by Hydra."""
    label = node._get_full_key(None) or node._target_
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (ValueError, TypeError)):
            raise type(cause)(f"{label}: {cause}") from None
        raise


def instantiate_accepted(node: DictConfig):
    """:func:`build` with only the keys the ``_target_`` accepts.

    Every prior (schedule) file carries the same paper knobs, so that ``prior.sigma1_sq=...``
    works in a sweep across methods; a class simply ignores the knobs it does not take.
    Unknown keys on the command line still fail at composition (the files fix the key set).
    """
    params = inspect.signature(get_object(node._target_)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return build(node)
    kept = OmegaConf.create({k: v for k, v in node.items() if k == "_target_" or k in params},
                            parent=node._get_parent())
    kept._set_key(node._key())  # keep the node's name for error messages
    return build(kept)


def build_method(cfg: DictConfig) -> PruningMethod:
    """The engine objects named by the config: no branching on the method's name."""
    return PruningMethod(
        prior=instantiate_accepted(cfg.prior),
        schedule=instantiate_accepted(cfg.schedule),
        pruner=build(cfg.pruning.pruner),
        targets=TargetSelector(include=list(cfg.pruning.include), exclude=list(cfg.pruning.exclude),
                               min_ndim=cfg.pruning.min_ndim),
    )


def _training_arguments(cfg: DictConfig, run_dir: Path, task) -> TrainingArguments:
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    extra = trainer.pop("extra") or {}
    for owned in config_schema.OWNED_TRAINER_FIELDS:  # refused by validate() when set; ours below
        trainer.pop(owned, None)
    arguments = {**trainer, **extra}  # extra: fields this transformers version's schema lacks, or overrides
    if not torch.cuda.is_available():
        arguments["dataloader_pin_memory"] = False  # nothing to pin to; avoids a warning per loader
    return task.training_arguments(output_dir=str(run_dir / "checkpoints"), seed=cfg.seed, report_to=[], **arguments)


def _group_name(cfg: DictConfig) -> str:
    """W&B group: the experiment, plus the sweep folder for a multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        if hc.mode.name == "MULTIRUN":
            return f"{cfg.experiment_name}/{Path(hc.sweep.dir).name}"
    except ValueError:  # not running under @hydra.main (tests, notebooks)
        pass
    return cfg.experiment_name


def _build_loggers(cfg: DictConfig, run_dir: Path, resolved: dict, resuming: bool) -> Loggers:
    backends = []
    for name, node in cfg.logger.items():
        if node is None:
            continue
        kwargs = {"run_dir": run_dir, "run_config": resolved, "resuming": resuming}
        if name == "wandb":  # the W&B run is grouped by experiment/sweep, typed by method
            kwargs |= {"group": node.get("group") or _group_name(cfg), "job_type": node.get("job_type") or cfg.method.name}
        # partial: the run's config must reach the backend as data, not be instantiated itself
        backends.append(instantiate(node, _partial_=True)(**kwargs))
    return Loggers(backends)


def _flatten(node, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out |= _flatten(value, f"{prefix}{key}.")
        return out
    return {prefix[:-1]: node}


def _config_changes(saved: dict, current: dict) -> list[str]:
    """Keys whose values differ between two resolved configs, ignoring :data:`RESUME_IGNORES`.

    Only keys both configs have are compared: a key that one of them lacks was added or removed by a
    change of mgpp itself (a new ``trainer.`` field, say), which a rerun of an older run folder must
    survive; a value the user changed is caught because its key is in both.
    """
    old, new = _flatten(saved), _flatten(current)
    ignored = lambda key: any(key == k or key.startswith(k + ".") for k in RESUME_IGNORES)  # noqa: E731
    return sorted(k for k in old.keys() & new.keys() if not ignored(k) and _portable(old[k]) != _portable(new[k]))


def _portable(value: Any) -> Any:
    """A value as it would read on another machine: a path into an installed package (the offline
    model's folder) loses the virtual environment it was resolved in."""
    if isinstance(value, str) and "site-packages/" in value:
        return value.split("site-packages/", 1)[1]
    return value


def finished_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """The final metrics of a finished run in ``run_dir``, or None."""
    path = Path(run_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _check_resumable(run_dir: Path, resolved: dict) -> None:
    """Refuse to resume or skip a run that was configured differently: its results would be mislabelled."""
    saved = run_dir / "config.yaml"
    if not saved.exists():
        return
    changes = _config_changes(OmegaConf.to_container(OmegaConf.load(saved)), resolved)
    if changes:
        shown = ", ".join(changes[:6]) + (", ..." if len(changes) > 6 else "")
        raise ValueError(f"{run_dir} holds a run configured differently ({shown}); choose another output_dir "
                         "or set resume=false to overwrite it")


def train(cfg: DictConfig) -> dict[str, float]:
    """Fine-tune and prune as configured; returns the final metrics (also in ``metrics.json``)."""
    config_schema.validate(cfg)
    task = build(cfg.task)
    method = build_method(cfg)  # bad task/prior/schedule values fail here, before any data or model
    run_dir = Path(cfg.output_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    checkpoint = None
    if cfg.resume:
        _check_resumable(run_dir, resolved)
        done = finished_metrics(run_dir)
        if done is not None:
            log.info("%s is finished (%s): skipped; resume=false reruns it", run_dir, METRICS_FILE)
            return done
        checkpoint = get_last_checkpoint(str(run_dir / "checkpoints")) if (run_dir / "checkpoints").is_dir() else None
        if checkpoint:
            log.info("resuming from %s", checkpoint)
    else:
        (run_dir / METRICS_FILE).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    set_seed(cfg.seed)
    start = time.time()

    model, tokenizer = task.build_model(cfg.model)
    train_set, eval_sets = task.datasets(tokenizer, cfg.data_dir, cfg.max_train_samples, cfg.max_eval_samples,
                                         cfg.seed)
    trainer = task.make_trainer(model, _training_arguments(cfg, run_dir, task), train_set, eval_sets, tokenizer)
    train_size = cfg.train_size or len(train_set)
    if cfg.max_train_samples is not None and cfg.train_size is None and method.prior.active:
        log.warning("max_train_samples=%d: the prior is scaled by 1/n with n=%d, the subset's size; set "
                    "train_size=<the full training set's size> to give it the strength it has on the full set",
                    cfg.max_train_samples, train_size)
    pruning = PruningCallback(method, train_size=train_size, track_regrowth=cfg.report.regrowth).attach(trainer)
    loggers = _build_loggers(cfg, run_dir, resolved, checkpoint is not None) if trainer.is_world_process_zero() else Loggers([])
    reporting = ReportingCallback(loggers, pruning, cfg.report.histogram_every, cfg.report.histogram_bins)
    trainer.add_callback(reporting)

    trainer.train(resume_from_checkpoint=checkpoint)

    metrics = task.evaluate(trainer, eval_sets)
    final_step = trainer.state.global_step
    metrics |= {"sparsity": pruning.targets.sparsity(), "target_sparsity": pruning.schedule.final_sparsity,
                "train_steps": final_step, "train_examples": len(train_set), "train_size": train_size,
                "wall_time_s": round(time.time() - start, 1)}

    if trainer.is_world_process_zero():
        rows = reporting.log_weights(final_step)
        with open(run_dir / "layer_sparsity.csv", "w", newline="") as f:
            csv.writer(f).writerows([LAYER_COLUMNS, *rows])
        if cfg.save_model:
            trainer.save_model(str(run_dir / "model"))
            if getattr(task, "save_mask", False):  # upstream pruning: keep the mask for sparse transfer
                save_mask(pruning.targets.names, pruning.targets.params, run_dir / "model" / "mask.safetensors")
        loggers.finish(metrics)
        (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")  # last: marks the run finished
    log.info("final: %s", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()})
    return metrics


def config_dir() -> str:
    """``conf/`` of a source checkout (editable installs, the repository), else the copy a wheel ships."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "conf"
    return str(checkout if (checkout / "train.yaml").is_file() else here / "conf")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float:
    metrics = train(cfg)
    key = next((k for k in metrics if k.endswith(cfg.task.main_metric)), None)
    return metrics[key] if key else float("nan")  # the value an optimising sweeper maximises


if __name__ == "__main__":
    main()
