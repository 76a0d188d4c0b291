"""Training tasks as plug-ins, one file each ending in one `register(...)` call, found by
`task:` in a stage's data sources: caption, instruct, lm, clip (stage 0), sam and t2i
(the decoders' own pretraining), seg and gen (the output experts), sceneqa (spatial
questions about several shapes). onellm/tasks/base.py
holds the contract; a task from outside the package registers the same way, and an
installed package names its module under the `onellm.tasks` entry-point group."""

from importlib.metadata import entry_points

from onellm.tasks import caption, clip, gen, instruct, lm, sam, sceneqa, seg, t2i  # noqa: F401  (registers)
from onellm.tasks.base import TASKS, Batching, Step, Task, register


def find_task(name: str) -> Task:
    """The task registered as `name`, importing an installed plug-in's module (entry point
    group `onellm.tasks`) when that is where it lives; `RegistryError` lists the known."""
    if name not in TASKS:
        for ep in entry_points(group="onellm.tasks"):
            if ep.name == name:
                ep.load()  # its import registers it
    return TASKS.get(name)


def output_tasks() -> list[str]:
    """The tasks with a held-out metric of their own (`onellm eval --task`)."""
    return [n for n in TASKS if TASKS.get(n).metrics and not TASKS.get(n).captions]


__all__ = ["TASKS", "Batching", "Step", "Task", "find_task", "output_tasks", "register"]
