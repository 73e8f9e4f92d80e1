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
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import TrainingArguments, set_seed

from . import config as config_schema
from .callback import PruningCallback
from .command_line import (USER_ERRORS, RunRefused, UsageError, check_override_keys, check_plugins, check_requirements,
                           describe_error, overrides_of, report_error, show_job_config, wants_job_config)
from .config import build, check_target_keys, config_dir
from .console import final_line, install_console, quiet_libraries
from .distributed import export_slurm_env
from .loggers import Loggers
from .methods import build_method
from .pruning import save_mask
from .checkpoints import SealCheckpoints
from .run_folder import CONFIG_FILE, MASK_FILE, METRICS_FILE, OS_LOCK_FILE, RunFolder
from .training_log import TrainingLogCallback

log = logging.getLogger("mgpp.train")

__all__ = ["train", "prepare", "main", "finished_metrics"]


#: TrainingArguments fields whose check depends on this machine's hardware (a GPU recipe on a CPU)
HARDWARE_FIELDS = ("bf16", "fp16", "tf32", "bf16_full_eval", "fp16_full_eval")


def _training_arguments(cfg: DictConfig, run_dir: Path, task, hardware: bool = True) -> TrainingArguments:
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    if not hardware:  # checked on the machine that runs it
        trainer |= {name: None if name == "tf32" else False for name in HARDWARE_FIELDS if name in trainer}
    extra = trainer.pop("extra") or {}
    for owned in config_schema.OWNED_TRAINER_FIELDS:  # refused by validate() when set; ours below
        trainer.pop(owned, None)
    arguments = {**trainer, **extra}  # extra: fields this transformers version's schema lacks, or overrides
    if not torch.cuda.is_available():
        arguments["dataloader_pin_memory"] = False  # nothing to pin to; avoids a warning per loader
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun on CPUs: without use_cpu the Trainer would
            arguments["use_cpu"] = True  # train each process alone (gloo group up, but no DDP)
    return task.training_arguments(output_dir=str(run_dir / "checkpoints"), seed=cfg.seed, report_to=[], **arguments)


def _sweep_name() -> str | None:
    """In a multirun, the sweep file's name (``sweep=pa_search``), else the sweep folder's; else None."""
    try:
        hc = HydraConfig.get()
    except ValueError:  # not running under Hydra's main (tests, notebooks)
        return None
    if hc.mode.name != "MULTIRUN":
        return None
    return hc.runtime.choices.get("sweep") or Path(hc.sweep.dir).name


def _wandb_identity(cfg: DictConfig, node: DictConfig) -> dict[str, Any]:
    """Name, group, job type and tags of a run's W&B run, unless the logger config sets them: named by
    model, task, method, sparsity and seed; grouped by the experiment, else the sweep, else task and
    method (so a group never mixes methods of ad-hoc runs); typed by method; tagged with each."""
    sweep = _sweep_name()
    if cfg.experiment_name != "default":
        group = cfg.experiment_name
    elif sweep:
        group = f"sweep-{sweep}"
    else:
        group = f"{cfg.task.name}-{cfg.method.name}"
    name = f"{cfg.model.name}-{cfg.task.name}-{cfg.method.name}-sparsity{cfg.sparsity:g}-seed{cfg.seed}"
    tags = [cfg.method.name, cfg.task.name, cfg.model.name, f"sparsity={cfg.sparsity:g}", f"seed={cfg.seed}",
            *(node.get("tags") or [])]
    return {"group": node.get("group") or group, "job_type": node.get("job_type") or cfg.method.name,
            "name": node.get("name") or name, "tags": list(dict.fromkeys(tags))}


def _build_loggers(cfg: DictConfig, run_dir: Path, resolved: dict, resuming: bool) -> Loggers:
    backends = []
    for name, node in cfg.logger.items():
        if node is None:
            continue
        kwargs = {"run_dir": run_dir, "run_config": resolved, "resuming": resuming}
        if name == "wandb":
            kwargs |= _wandb_identity(cfg, node)
        # partial: the run's config must reach the backend as data, not be instantiated itself
        backends.append(instantiate(node, _partial_=True)(**kwargs))
    return Loggers(backends)


def finished_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """The final metrics of a finished run in ``run_dir``, or None."""
    return RunFolder(run_dir).finished_metrics()


def _final_metrics(task, trainer, eval_sets: dict) -> dict[str, float]:
    """The task's final dev metrics; the in-loop evaluation of the last step when there was one
    (one eval set, evaluated at the final step, with all the task's metrics), so that it is not run
    and logged a second time."""
    history = trainer.state.log_history
    last_eval = next((h for h in reversed(history) if any(k.startswith("eval_") for k in h)), None)
    complete = last_eval is not None and all(f"eval_{m}" in last_eval for m in task.metrics)
    if len(eval_sets) == 1 and complete and last_eval.get("step") == trainer.state.global_step:
        return {k: v for k, v in last_eval.items() if k.startswith("eval_") or k == "epoch"}
    return task.evaluate(trainer, eval_sets)  # several splits, or metrics the in-loop evaluation lacks


def prepare(cfg: DictConfig, hardware: bool = True):
    """Every check a run makes before it touches its folder or loads a model or data: the config's
    values, the optional packages its loggers need, the engine objects and the TrainingArguments it
    builds. Returns ``(task, method, training_args)``. ``--cfg job`` runs it with ``hardware=False``:
    what depends on this machine (bf16, fp16 on a GPU) is left to the machine that runs it."""
    config_schema.validate(cfg, hardware=hardware)
    for name, node in cfg.logger.items():
        if node is not None:
            check_target_keys(node, f"logger.{name}", strict=True)
            check_requirements(node._target_, f"logger.{name}")
    task = build(cfg.task)
    method = build_method(cfg)
    training_args = _training_arguments(cfg, Path(cfg.output_dir), task, hardware)  # a bad trainer.* value fails here
    return task, method, training_args


def train(cfg: DictConfig) -> dict[str, float]:
    """Fine-tune and prune as configured; returns the final metrics (also in ``metrics.json``).

    The recipe: check the config and the run folder (skip a finished run, resume an interrupted
    one), build the task, method, model, data and Trainer, fit, then write the folder's files and
    close the loggers, whatever happened.
    """
    # -- prepare: every config error before any model or data is loaded
    quiet_libraries(cfg.verbose)
    export_slurm_env()  # a task of a multi-process SLURM job: its rank, as torchrun would set it
    task, method, training_args = prepare(cfg)
    folder = RunFolder(cfg.output_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    folder.acquire()  # one live run per folder, taken before anything in it is read, moved or written
    try:
        checkpoint = None
        if cfg.resume:
            checkpoint = folder.check_resumable(resolved)
            done = folder.finished_metrics()
            if done is not None:
                log.info("%s is finished (%s): skipped; resume=false reruns it", folder.path, METRICS_FILE)
                return done
            if checkpoint:
                log.info("resuming from %s", checkpoint)
        elif folder.owner:  # the other ranks of a multi-process run leave the folder to rank 0
            aside = folder.start_afresh()
            if aside:
                log.info("resume=false: the old checkpoints are moved to %s", aside)
        return _run(cfg, task, method, folder, resolved, checkpoint, training_args)
    finally:
        folder.release()


def _run(cfg, task, method, folder: RunFolder, resolved: dict, checkpoint, training_args) -> dict[str, Any]:
    """The part of :func:`train` that holds the run folder: load, fit, write."""
    if folder.owner:
        folder.write_config(cfg)
    set_seed(cfg.seed)
    start = time.time()

    # -- build
    model, tokenizer = task.build_model(cfg.model)
    train_set, eval_sets = task.datasets(tokenizer, cfg.data_dir, cfg.max_train_samples, cfg.max_eval_samples,
                                         cfg.seed)
    trainer = task.make_trainer(model, training_args, train_set, eval_sets, tokenizer)
    if cfg.trainer.get("fsdp") and not getattr(trainer, "is_fsdp_enabled", False):
        log.warning("trainer.fsdp is set but the Trainer runs without FSDP (accelerate shards on GPUs only; on CPUs "
                    "it falls back to DDP or one process): the targets are whole tensors on every rank")
    train_size = cfg.train_size or len(train_set)
    if cfg.max_train_samples is not None and cfg.train_size is None and method.prior.active:
        log.warning("max_train_samples=%d: the prior is scaled by 1/n with n=%d, the subset's size; set "
                    "train_size=<the full training set's size> to give it the strength it has on the full set",
                    cfg.max_train_samples, train_size)
    pruning = PruningCallback(method, train_size=train_size, track_regrowth=cfg.report.regrowth).attach(trainer)
    install_console(trainer, pruning, cfg.task.get("main_metric"), cfg.verbose)
    main_process = trainer.is_world_process_zero()
    loggers = _build_loggers(cfg, folder.path, resolved, checkpoint is not None) if main_process else Loggers([])
    logging_callback = TrainingLogCallback(loggers, pruning, cfg.report.histogram_every, cfg.report.histogram_bins)
    trainer.add_callback(logging_callback)
    trainer.add_callback(SealCheckpoints())  # last: it seals what the Trainer and the callbacks above wrote

    # -- fit, then write: the run's own files first, the optional backends last
    metrics: dict[str, Any] = {}
    exit_code = 1  # until the run's files are written
    try:
        try:
            if checkpoint and trainer.args.world_size == 1 and _training_done(checkpoint):  # killed after the last
                # step's checkpoint, before metrics.json (one process: several resume through the Trainer)
                log.info("%s holds the run's last step: finishing the run from it, without training", checkpoint)
                _restore_last_step(trainer, pruning, checkpoint)
            else:
                trainer.train(resume_from_checkpoint=checkpoint)
        except Exception as err:  # a bug or a library's error mid-training keeps its traceback (see _hydra_main)
            err.mgpp_while_training = True
            raise
        metrics = _final_metrics(task, trainer, eval_sets)
        final_step = trainer.state.global_step
        metrics |= {"sparsity": pruning.sparsity(), "target_sparsity": pruning.schedule.final_sparsity,
                    "train_steps": final_step, "train_examples": len(train_set), "train_size": train_size,
                    "wall_time_s": round(time.time() - start, 1)}
        sharded = pruning.group is not None  # FSDP2: each rank holds shards; every rank joins the reductions
        rows = logging_callback.log_weights(final_step, log=main_process) if main_process or sharded else None
        if cfg.save_model:
            trainer.save_model(str(folder.model_dir))  # every rank: FSDP gathers the full state dict for rank 0
        # rank 0's own files after the last collective, so that a failed write cannot leave ranks waiting
        if main_process:
            folder.write_layer_table(rows)
            if cfg.save_model and getattr(task, "save_mask", False):  # upstream pruning: the mask for sparse transfer
                whole = _whole_targets(pruning, folder.model_dir)
                if whole is not None:
                    save_mask(*whole, folder.model_dir / MASK_FILE)
            folder.write_metrics(metrics)  # last of the run's files: marks it finished
            folder.tidy()
        exit_code = 0
    finally:
        loggers.finish(logging_callback.summary | metrics, exit_code)
    log.info(final_line(metrics, cfg.task.get("main_metric"), time.time() - start))
    return metrics


def _training_done(checkpoint: str) -> bool:
    """Whether ``checkpoint`` is of the run's last optimizer step (resuming it, the Trainer would train one more)."""
    from transformers import TrainerState

    state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
    return 0 < state.max_steps <= state.global_step and os.path.isfile(os.path.join(checkpoint, "model.safetensors"))


def _restore_last_step(trainer, pruning: PruningCallback, checkpoint: str) -> None:
    """The model and Trainer state of a checkpoint of the last step, restored as a resume would (the
    optimizer is not needed: nothing trains), so that the run's files are written as the uninterrupted
    run wrote them."""
    from safetensors.torch import load_model
    from transformers import TrainerState

    missing, unexpected = load_model(trainer.model, os.path.join(checkpoint, "model.safetensors"), strict=False)
    tied = set(getattr(trainer.model, "_tied_weights_keys", None) or ())  # stored once, as their source
    if unexpected or set(missing) - tied:
        raise ValueError(f"{checkpoint}/model.safetensors does not match the model (missing "
                         f"{sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]}); rerun with resume=false")
    trainer.state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
    trainer.state.is_world_process_zero = trainer.is_world_process_zero()
    trainer.state.is_local_process_zero = trainer.is_local_process_zero()
    pruning.setup(trainer.model, trainer.state.max_steps, trainer.state.global_step)


def _whole_targets(pruning: PruningCallback, model_dir: Path) -> tuple[list[str], list[torch.Tensor]] | None:
    """The target tensors whole: in memory, or under sharded training (each rank holds shards) as
    the saved model holds them, gathered by the Trainer's save. None, with a warning, where the saved
    model cannot give them (no safetensors, other names): the run's results stand without its mask."""
    names = pruning.targets.names
    if pruning.group is None:
        return names, pruning.targets.params
    from .export import read_state_dict

    try:
        state = read_state_dict(model_dir)
    except (FileNotFoundError, ValueError) as err:
        log.warning("mask.safetensors not written: %s; sparse transfer can read the mask from the saved "
                    "model's zeros", err)
        return None
    missing = [n for n in names if n not in state]
    if missing:
        log.warning("mask.safetensors not written: the saved model in %s lacks target %r (%d in all)", model_dir,
                    missing[0], len(missing))
        return None
    return names, [state[n] for n in names]


def _raised_while_training(err: BaseException) -> bool:
    """An error from inside the Trainer's loop (not a config, data or folder error): its traceback is
    what a user needs; a diverging loss (FloatingPointError) says all there is in its message."""
    return getattr(err, "mgpp_while_training", False) and not isinstance(err, FloatingPointError)


def _forget_failed_start(cfg: DictConfig) -> None:
    """A run refused before it trained (a config, data or folder error) leaves no folder behind: in the
    folder Hydra made for this job, its own record (``.hydra/``, the job log) and the config written
    at the start go, then the folder and its empty parents (up to the sweep folder, or the working
    directory); anything else in it (a log, a checkpoint, metrics, a lock, a user's files) stays."""
    try:
        hc = HydraConfig.get()
    except ValueError:
        return
    folder = Path(hc.runtime.output_dir)
    if str(cfg.get("output_dir")) != str(folder) or not folder.is_dir():
        return  # an output_dir of the user's own: never touched
    ours = {".hydra", CONFIG_FILE, f"{hc.job.name}.log", OS_LOCK_FILE}
    if any(p.name not in ours for p in folder.iterdir()):
        return
    for name in ours:
        target = folder / name
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    stop = Path(hc.sweep.dir).resolve() if hc.mode.name == "MULTIRUN" else Path.cwd().resolve()
    current = folder.resolve()
    while True:
        try:
            current.rmdir()  # only an empty folder; a sibling job's, being made meanwhile, is left alone
        except OSError:
            return
        current = current.parent
        if current == stop or stop not in current.parents:
            return


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    try:
        metrics = train(cfg)
    except USER_ERRORS as err:
        _forget_failed_start(cfg)
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or _raised_while_training(err):
            raise
        # Hydra prints a compact exception as its message alone (after the job's overrides), and a
        # sweep's launcher (joblib, submitit) carries it back from its worker like any other failed job
        raise RunRefused(f"mgpp: error: {describe_error(err)}") from None
    key = next((k for k in metrics if k.endswith(cfg.task.main_metric)), None)
    return metrics[key] if key else float("nan")  # the value an optimising sweeper maximises


def main(argv: list[str] | None = None) -> None:
    """``python -m mgpp.train``: the command line checked (keys, plugins), ``--cfg job`` answered with
    the checked config, anything else handed to Hydra."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        check_override_keys(overrides_of(argv))
        check_plugins(overrides_of(argv))
    except UsageError as err:
        sys.exit(report_error(err))
    if wants_job_config(argv):
        sys.exit(show_job_config(argv, check=lambda cfg: prepare(cfg, hardware=False)))
    _hydra_main()


if __name__ == "__main__":
    main()
