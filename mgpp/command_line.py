"""The command line around ``python -m mgpp.train``, checked before Hydra composes or anything loads.

- :func:`check_override_keys`: a misspelt key, with or without ``+``, is refused with the nearest
  known key (Hydra's own advice, "use +key=value", would add a key that the run then refuses).
- :func:`check_plugins`: a launcher or sweeper whose extra is not installed is named with the
  ``pip install`` that brings it, instead of Hydra's "Could not find 'hydra/sweeper/optuna'".
- :func:`wants_job_config` / :func:`show_job_config`: ``--cfg job`` prints the keys that conf/ and the
  command line set (``--all``: every TrainingArguments field too) and checks them as a run would.
- :class:`UsageError` (defined in :mod:`mgpp.config`) and :data:`USER_ERRORS`: what is reported as one
  line, without a traceback (``HYDRA_FULL_ERROR=1`` shows it).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Sequence

from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback

from .config import UsageError, config_dir, nearest

__all__ = ["UsageError", "USER_ERRORS", "check_override_keys", "check_plugins", "check_requirements",
           "wants_job_config", "show_job_config", "report_error", "describe_error", "overrides_of"]


def _user_errors() -> tuple[type[BaseException], ...]:
    from .run_folder import FolderInUse

    # OSError: a missing file, an unreachable hub (ConnectionError), a full disk
    return (ValueError, TypeError, OSError, ImportError, FolderInUse, FloatingPointError)


#: errors a user can fix from what they say: printed as one line (their traceback with HYDRA_FULL_ERROR=1)
USER_ERRORS = _user_errors()


def describe_error(err: BaseException) -> str:
    """``err`` as the one line a user reads; where an error's own words may not say where it arose
    (a system or type error), how to see the traceback."""
    where = " (HYDRA_FULL_ERROR=1 shows where)" if isinstance(err, (OSError, TypeError)) else ""
    return f"{err}{where}"


def report_error(err: BaseException, prog: str = "mgpp") -> int:
    """Print ``err`` as one line (or re-raise it under ``HYDRA_FULL_ERROR=1``); the exit status to use."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    print(f"{prog}: error: {describe_error(err)}", file=sys.stderr)
    return 1


# -- keys -------------------------------------------------------------------------------------
def _schema_keys() -> tuple[set[str], dict[str, set[str]]]:
    """The top-level keys and config groups, and the keys of the typed nodes below them."""
    from .config import MethodConfig, ModelConfig, PruningConfig, ReportConfig, TrainConfig, TrainerConfig

    groups = {p.name for p in Path(config_dir()).iterdir() if p.is_dir()}
    top = {f.name for f in fields(TrainConfig)} | groups | {"hydra"}
    nested = {"trainer": TrainerConfig, "report": ReportConfig, "model": ModelConfig, "method": MethodConfig,
              "pruning": PruningConfig}
    return top, {name: {f.name for f in fields(schema)} for name, schema in nested.items()}


def check_override_keys(overrides: Sequence[str]) -> None:
    """Refuse an override of a key the config does not have, naming the nearest one; groups
    (``model=``), Hydra's own keys and the untyped nodes (``task.``, ``prior.``, ...) pass to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return  # Hydra reports a malformed override itself, in its own words
    top, nested = _schema_keys()
    for override in parsed:
        key = override.key_or_group
        if override.is_delete() or "/" in key or key.startswith("hydra") or override.package:
            continue
        head, _, rest = key.partition(".")
        if head not in top:
            raise UsageError(f"unknown config key '{head}'{nearest(head, top)}; the keys: python -m mgpp.train "
                             "--cfg job")
        sub = rest.split(".", 1)[0]
        if sub and head in nested and sub not in nested[head]:
            hint = nearest(sub, nested[head], f"{head}.")
            raise UsageError(f"unknown config key '{head}.{sub}'{hint}; the keys: python -m mgpp.train --cfg job"
                             + (" --all" if head == "trainer" else ""))


# -- plugins ----------------------------------------------------------------------------------
#: a word in a launcher or sweeper config -> (the plugin's module, the extra that installs it)
PLUGINS = {"joblib": ("hydra_plugins.hydra_joblib_launcher", "sweeps"),
           "submitit": ("hydra_plugins.hydra_submitit_launcher", "sweeps"),
           "optuna": ("hydra_plugins.hydra_optuna_sweeper", "sweeps")}


def _choices(overrides: Sequence[str]) -> dict[str, str]:
    out = {}
    for override in overrides:
        key, sep, value = override.lstrip("+").partition("=")
        if sep:
            out[key] = value
    return out


def check_plugins(overrides: Sequence[str]) -> None:
    """Refuse a ``hydra/launcher=``, ``hydra/sweeper=``, ``sweep=`` or ``experiment=`` choice whose Hydra
    plugin is not installed, naming the extra, before Hydra says it cannot find the config."""
    root = Path(config_dir())
    files = []
    for key, value in _choices(overrides).items():
        if key in ("hydra/launcher", "hydra/sweeper"):
            seen = set()
            while value not in seen:  # a local launcher file may build on another (slurm_multi: slurm)
                seen.add(value)
                local = root / key / f"{value}.yaml"
                text = local.read_text() if local.is_file() else value
                files.append(text)
                base = [line.strip()[2:].strip() for line in text.splitlines() if line.strip().startswith("- ")]
                value = next((b for b in base if (root / key / f"{b}.yaml").is_file()), value)
        elif key in ("sweep", "experiment") and (root / key / f"{value}.yaml").is_file():
            files.append((root / key / f"{value}.yaml").read_text())
    for text in files:
        body = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
        for word, (module, extra) in PLUGINS.items():
            if word in body and not _installed(module):
                raise UsageError(f"this sweep needs the Hydra plugin {module.rsplit('.', 1)[-1]}: "
                                 f"pip install 'mgpp[{extra}]'")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def check_requirements(target: str, where: str) -> None:
    """A logger (or other ``_target_`` class) that declares ``requires = (module, extra)``: refused
    before anything loads when the module is missing, naming the extra."""
    from hydra.utils import get_class

    needs = getattr(get_class(target), "requires", None)
    if needs and not _installed(needs[0]):
        raise UsageError(f"{where} needs the package {needs[0]}: pip install 'mgpp[{needs[1]}]' (or leave it out)")


# -- --cfg job --------------------------------------------------------------------------------
#: Hydra's flags that take a value (the next argument)
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--experimental-rerun", "--shell-completion", "-sc", "--info", "-i"}


def wants_job_config(argv: Sequence[str]) -> bool:
    """``--cfg job`` (``-c job``, ``--cfg=job``), alone with ``--resolve``/``--all`` and overrides."""
    args = list(argv)
    job = any(a in ("--cfg=job", "-c=job") for a in args) or any(
        a in ("--cfg", "-c") and i + 1 < len(args) and args[i + 1] == "job" for i, a in enumerate(args))
    others = [a for a in args if a.startswith("-") and a not in ("--cfg", "-c", "--cfg=job", "-c=job", "--resolve",
                                                               "--all")]
    return job and not others


def overrides_of(argv: Sequence[str]) -> list[str]:
    """The overrides of a command line (``key=value`` arguments), without Hydra's flags and their values."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in _FLAGS_WITH_VALUE:
            skip = True
            continue
        if not a.startswith("-"):
            out.append(a)
    return out


def _generated_trainer_defaults() -> dict:
    """``{name: default}`` of the TrainingArguments fields the schema adds beyond the usual knobs."""
    from dataclasses import MISSING

    from .config import TrainerConfig, _TrainerKnobs

    usual = {f.name for f in fields(_TrainerKnobs)}
    out = {}
    for f in fields(TrainerConfig):
        if f.name not in usual:
            out[f.name] = f.default_factory() if f.default_factory is not MISSING else f.default
    return out


def _same(value, default) -> bool:
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=False)
    if hasattr(default, "value"):  # an enum default (IntervalStrategy.NO): its value is what a config holds
        default = default.value
    return value == default


def show_job_config(argv: Sequence[str], check) -> int:
    """Print the job config as ``--cfg job`` does, leaving out the TrainingArguments fields nobody set
    (``--all`` keeps them), then check it as a run would (``check(cfg)``); the exit status."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict

    overrides = overrides_of(argv)
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3", job_name="train"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
    except HydraException as err:
        return report_error(err)
    HydraConfig.instance().set_config(cfg)
    shown = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(shown):
        del shown["hydra"]
        if "--all" not in argv:  # the fields nobody set: at their TrainingArguments default, not named
            named = {o.lstrip("+").split("=", 1)[0] for o in overrides}
            for name, default in _generated_trainer_defaults().items():
                if name in shown.trainer and f"trainer.{name}" not in named and _same(shown.trainer[name], default):
                    del shown.trainer[name]
    if "--resolve" in argv:
        with open_dict(shown):
            shown.output_dir = cfg.hydra.run.dir
    print(OmegaConf.to_yaml(shown, resolve="--resolve" in argv), end="")
    checked = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(checked):
        checked.output_dir = cfg.hydra.run.dir
        del checked["hydra"]
    try:
        check(checked)
    except USER_ERRORS as err:
        return report_error(err)
    return 0


class RunRefused(CompactHydraException):
    """A run stopped by a config, data or folder error: its one-line message, without a traceback."""


class RefuseLiveFolder(Callback):
    """Hydra callback (conf/hydra/default.yaml): a single run into a folder that a live run holds is refused
    before Hydra writes anything there (its ``.hydra/`` record, the job log). Sweep jobs' folders are known
    only as each job starts; ``train()`` refuses those, after Hydra's record of the job."""

    def on_run_start(self, config, **kwargs) -> None:
        from .distributed import is_first_process
        from .run_folder import RunFolder, in_use_message

        if not is_first_process():  # the other ranks of a multi-process run: rank 0 takes the folder
            return
        folder = Path(str(config.hydra.run.dir))
        holder = RunFolder(folder).holder()
        if holder is not None:  # Hydra turns a callback's exception into a warning and goes on: exit here
            print(f"mgpp: error: {in_use_message(folder, holder)}", file=sys.stderr)
            raise SystemExit(1)
