"""Multi-process runs: sharded targets (FSDP2) and SLURM jobs with several tasks per run.

* Under DDP every rank holds whole, identical weights and gradients (DDP averages the gradients
  before the optimizer step), so each rank adds the same prior and prunes the same weights: the
  callback needs nothing from this module.
* Under FSDP2 (``fully_shard``) every target is a ``DTensor`` whose local tensor is this rank's
  dim-0 shard. :func:`local_shards` gives the callback those local tensors and the process group
  they span; the prior acts on the local shards (it is elementwise) and
  :meth:`mgpp.pruning.GlobalPruner.prune_` selects over all shards by summing its histograms.
* A SLURM job with several tasks per run (``hydra/launcher=slurm_multi``) runs the task function
  once per task; :func:`export_slurm_env` turns SLURM's variables into the ``RANK``/``WORLD_SIZE``/
  ``MASTER_ADDR`` ones torch and the Trainer read.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["local_shards", "export_slurm_env"]


def local_shards(params: Sequence[Tensor]) -> tuple[list[Tensor], object | None]:
    """``(local tensors, process group)``: the params themselves and ``None`` when none is sharded; for
    ``DTensor`` params sharded along dim 0 of a 1-D mesh (FSDP2), their local shards (views: writing
    them writes the params) and the mesh's group."""
    try:
        from torch.distributed.tensor import DTensor, Shard
    except ImportError:  # pragma: no cover - torch without distributed
        return list(params), None
    if not any(isinstance(p, DTensor) for p in params):
        return list(params), None
    group, local = None, []
    for p in params:
        if not isinstance(p, DTensor):
            raise ValueError("some pruning targets are sharded (DTensor) and some are not: shard every layer "
                             "that holds targets (fully_shard each transformer block), or none")
        if p.device_mesh.ndim != 1 or tuple(p.placements) != (Shard(0),):
            raise ValueError(f"pruning supports parameters sharded along dim 0 of a 1-D mesh (FSDP2's default), "
                             f"got placements {p.placements} on a {p.device_mesh.ndim}-D mesh")
        mesh_group = p.device_mesh.get_group()
        if group is not None and mesh_group is not group:
            raise ValueError("pruning targets are sharded over different process groups")
        group = mesh_group
        local.append(p.to_local())
    return local, group


def _slurm_multi_task() -> bool:
    """A task of a multi-task SLURM step (``srun``): ``SLURM_STEP_NUM_TASKS`` is set in srun steps only, unlike
    ``SLURM_NTASKS``, so a single python inside an ``sbatch -n 8`` allocation is not one."""
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1 and "SLURM_PROCID" in os.environ


def is_first_process() -> bool:
    """Rank 0 of a multi-process run (torchrun's ``RANK``, or SLURM's ``SLURM_PROCID`` before
    :func:`export_slurm_env` sets ``RANK``), or the only process."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    return not _slurm_multi_task() or int(os.environ["SLURM_PROCID"]) == 0


def export_slurm_env() -> bool:
    """In a task of a multi-task SLURM step (``srun``, as submitit launches them), set ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` from SLURM's
    variables, unless a launcher (torchrun, accelerate) set them already. A batch script that runs python
    once inside an ``sbatch -n 8`` allocation is a single process: it is left alone. Returns whether it did."""
    if "RANK" in os.environ or not _slurm_multi_task():
        return False
    ntasks = int(os.environ["SLURM_STEP_NUM_TASKS"])
    nodes = int(os.environ.get("SLURM_STEP_NUM_NODES", os.environ.get("SLURM_JOB_NUM_NODES", "1")))
    nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise RuntimeError("a multi-task SLURM step without SLURM_STEP_NODELIST: cannot tell the master node")
    per_node = os.environ.get("SLURM_STEP_TASKS_PER_NODE", "").split("(")[0].split(",")[0]
    job_id = int(os.environ.get("SLURM_JOB_ID", "0"))
    env = {
        "RANK": os.environ["SLURM_PROCID"],
        "WORLD_SIZE": str(ntasks),
        "LOCAL_RANK": os.environ.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": per_node if per_node.isdigit() else str(ntasks // max(nodes, 1)),
        "MASTER_ADDR": first_host(nodelist),
        # the same on every task of the job, and below Linux's ephemeral port range (32768-60999)
        "MASTER_PORT": os.environ.get("MASTER_PORT", str(15000 + job_id % 15000)),
    }
    os.environ.update(env)
    log.info("SLURM task %s of %s: torch.distributed via %s:%s", env["RANK"], ntasks, env["MASTER_ADDR"],
             env["MASTER_PORT"])
    return True


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[003-005,007],cpu01`` -> ``gpu003``; ``n[1-2]-ib`` -> ``n1-ib``."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):  # the first comma outside brackets ends the first entry
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            end = i
            break
    head = nodelist[:end]
    if "[" not in head:
        return head
    prefix, rest = head.split("[", 1)
    ranges, suffix = rest.split("]", 1)
    return prefix + ranges.split(",")[0].split("-")[0] + suffix
