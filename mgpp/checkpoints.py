"""Checkpoints a resume can trust, through the Trainer's public callback API.

The Hugging Face Trainer writes ``checkpoint-N`` in place, so a kill during the write leaves a folder
that looks like a checkpoint, and nothing notices a byte changed on disk later. Here every checkpoint
is *sealed* once it is complete: :class:`SealCheckpoints` (a ``TrainerCallback``, added after every
other callback) writes ``mgpp_checkpoint.json`` into it in ``on_save``, which the Trainer calls after
``_save_checkpoint`` has written the weights, optimizer, scheduler, RNG and trainer state and rotated
old checkpoints, and after the callbacks before it added their own files (the schedule's calibration).
The manifest holds the size and SHA-256 of every file; it is written last, atomically, so its
presence marks a checkpoint complete. A resume (:func:`checkpoint_problem`) verifies every file
against it and falls back to the newest intact checkpoint, naming the damaged file.

That on_save contract is the Trainer's documented callback order, checked (see ``tests/test_callback.py``)
on the releases in :data:`CHECKED_TRANSFORMERS`; a test fails on any other release until it is checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zipfile
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

__all__ = ["SealCheckpoints", "seal", "checkpoint_problem", "last_intact_checkpoint", "newest_sealed_checkpoint", "MANIFEST_FILE", "CHECKED_TRANSFORMERS", "UNSEALED"]

MANIFEST_FILE = "mgpp_checkpoint.json"
#: transformers releases (major.minor) whose ``on_save`` was checked to come after a complete, rotated checkpoint
CHECKED_TRANSFORMERS = ("5.25",)
#: what :func:`checkpoint_problem` says of a checkpoint without a manifest
UNSEALED = "not sealed"
_CHUNK = 1 << 22


def checkpoint_folder(output_dir: str | os.PathLike, step: int) -> Path:
    """Where the Trainer writes the checkpoint of optimizer step ``step``."""
    return Path(output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    """The checkpoint's files: everything but the manifest and a seal's staging file left by a kill."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not p.name.startswith(MANIFEST_FILE) and not p.name.startswith("." + MANIFEST_FILE))


def seal(folder: str | os.PathLike) -> Path:
    """Write ``folder``'s manifest: size and SHA-256 of each file in it, written to a temporary name and
    renamed into place, so that a manifest is either whole or absent."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in _files(folder)}
    target = folder / MANIFEST_FILE
    staging = folder / f".{MANIFEST_FILE}.{os.getpid()}.tmp"
    with open(staging, "w", encoding="utf-8") as f:
        json.dump({"format": 1, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(staging, target)
    return target


class SealCheckpoints(TrainerCallback):
    """Seal each checkpoint the Trainer has just written (add it after every callback that writes into
    checkpoints, so that their files are sealed too)."""

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()  # every rank's files (rng_state_<rank>.pth, shards) written before they are hashed
        folder = checkpoint_folder(args.output_dir, state.global_step)
        if state.is_world_process_zero and folder.is_dir():
            seal(folder)


def _verify(folder: Path, manifest: Path) -> str | None:
    try:
        files = {str(name): (int(entry["bytes"]), str(entry["sha256"]))
                 for name, entry in json.loads(manifest.read_text(encoding="utf-8"))["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"{MANIFEST_FILE} is damaged ({err!r})"
    for name, (size_sealed, digest) in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != size_sealed:
            return f"{name} holds {size} bytes, {size_sealed} when sealed"
        if _sha256(path) != digest:
            return f"{name} differs from its seal (SHA-256): changed on disk since it was written"
    return None


def _structure_problem(folder: Path) -> str | None:
    """What a checkpoint without a seal visibly lacks: a parsing trainer state, model weights, safetensors
    that hold the bytes their headers declare, torch files whose zip directory reads."""
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (the write did not finish)"
    try:
        json.loads(state.read_text())
    except ValueError as err:
        return f"trainer_state.json does not parse ({err})"
    weights = sorted(folder.glob("*.safetensors"))
    if not weights and not any(folder.glob("*.bin")):
        return "no model weights"
    for path in weights:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated"
            length = int.from_bytes(head, "little")
            try:
                header = json.loads(f.read(length))
            except ValueError:
                return f"{path.name} has a damaged header"
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        size = path.stat().st_size
        if size != 8 + length + end:
            return f"{path.name} holds {size} bytes, its header declares {8 + length + end}"
    for path in sorted([*folder.glob("*.pt"), *folder.glob("*.pth"), *folder.glob("*.bin")]):
        if not zipfile.is_zipfile(path):  # torch.save's format: a truncation loses the zip's directory
            return f"{path.name} is truncated or damaged (not a complete torch file)"
    return None


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """What is wrong with a checkpoint, or None. A sealed one is verified file by file against its
    manifest; one without a manifest gets :data:`UNSEALED` plus what its structure shows (None after
    the semicolon when it looks complete), for the caller to decide (see ``RunFolder.last_checkpoint``)."""
    folder = Path(folder)
    manifest = folder / MANIFEST_FILE
    if manifest.is_file():
        return _verify(folder, manifest)
    problem = _structure_problem(folder)
    return f"{UNSEALED}; {problem}" if problem else UNSEALED


def last_intact_checkpoint(checkpoint_dir: str | os.PathLike) -> str | None:
    """The newest intact checkpoint in ``checkpoint_dir`` (the Trainer's ``output_dir``), verified file by
    file against its seal; None when there is none. A damaged one (a kill during its write, a truncated,
    changed or missing file) is skipped with a warning naming the file; if checkpoints exist but none is
    intact, a ValueError says so. Checkpoints without a seal count only where no checkpoint is sealed
    (written by an mgpp older than the seals, or cut between write and seal under ``save_total_limit=1``):
    then they are checked for completeness, with a warning."""
    checkpoint_dir = Path(checkpoint_dir)
    log = logging.getLogger(__name__)
    found = _newest_first(checkpoint_dir)
    any_sealed = any((p / MANIFEST_FILE).is_file() for p in found)
    problems = []
    for checkpoint in found:
        problem = checkpoint_problem(checkpoint)
        if problem == UNSEALED and not any_sealed:
            log.warning("%s has no seal (%s): written by an older mgpp, or cut between its write and its seal; "
                        "checked for completeness only", checkpoint, MANIFEST_FILE)
            problem = None
        elif problem == UNSEALED:
            problem = "not sealed: its write was cut short"
        if problem is None:
            for bad, why in problems:
                log.warning("skipping damaged %s (%s); resuming from %s", bad, why, checkpoint.name)
            return str(checkpoint)
        problems.append((checkpoint.name, problem))
    if problems:
        raise ValueError(f"{checkpoint_dir}: no intact checkpoint to resume from ("
                         + "; ".join(f"{name}: {why}" for name, why in problems)
                         + "); rerun with resume=false to start afresh")
    return None


def newest_sealed_checkpoint(checkpoint_dir: str | os.PathLike) -> str | None:
    """The newest checkpoint with a seal, not verified (for a message: verifying reads every file)."""
    return next((str(p) for p in _newest_first(Path(checkpoint_dir)) if (p / MANIFEST_FILE).is_file()), None)


def _newest_first(checkpoint_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` folders in ``checkpoint_dir`` (none when it does not exist), newest first."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted((p for p in checkpoint_dir.iterdir() if re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-\d+", p.name)),
                  key=lambda p: int(p.name.rsplit("-", 1)[1]), reverse=True)
