"""Training tasks as plug-ins, one file each ending in one `register(...)` call, found by
`task:` in a stage's data sources: caption, instruct, lm, clip (stage 0), sam and t2i
(the decoders' own pretraining), seg and gen (the output experts). onellm/tasks/base.py
holds the contract; a task from outside the package registers the same way."""

from onellm.tasks import caption, clip, gen, instruct, lm, sam, seg, t2i  # noqa: F401  (registers)
from onellm.tasks.base import TASKS, Batching, Step, Task, register


def output_tasks() -> list[str]:
    """The tasks with a held-out metric of their own (`onellm eval --task`)."""
    return [n for n in TASKS if TASKS.get(n).metrics and not TASKS.get(n).captions]


__all__ = ["TASKS", "Batching", "Step", "Task", "output_tasks", "register"]
