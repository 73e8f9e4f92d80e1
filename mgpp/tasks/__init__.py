"""Task families: each a :class:`~mgpp.tasks.base.Task` that ``conf/task/*.yaml`` names by ``_target_``."""

from .base import Task, load_model
from .glue import GlueTask
from .mlm import CausalLMTask, MaskedLMTask
from .squad import SquadTask
from .summarization import SummarizationTask

__all__ = ["Task", "load_model", "GlueTask", "SquadTask", "MaskedLMTask", "CausalLMTask", "SummarizationTask"]
