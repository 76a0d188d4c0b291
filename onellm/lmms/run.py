"""`onellm eval RUN --backend lmms-eval --tasks T[,T2]`: lmms-eval in this process, on the
model already loaded (lmms-eval's `simple_evaluate` with a model instance), with onellm's
tasks on its include path. The numbers are lmms-eval's: the same as `python -m lmms_eval
--model onellm --model_args pretrained=RUN --include_path $(python -m onellm.lmms
tasks-path) --tasks T` gives (the `onellm` name resolves to the chat class used here).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

from lmms_eval.evaluator import simple_evaluate
from lmms_eval.tasks import TaskManager

from onellm.errors import InputError
from onellm.lmms import tasks_path
from onellm.lmms.chat_model import OneLLMChat
from onellm.lmms.model import load


def evaluate_lmms(
    model: Any,
    tasks: list[str],
    *,
    batch_size: int = 8,
    limit: int | None = None,
    include_path: str | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Run lmms-eval's `tasks` on `model` -> {task: {metric: value}} (lmms-eval's
    "results", its `,none` filter suffixes dropped). `max_new_tokens` replaces the tasks'
    own (lmms-eval's `--gen_kwargs max_new_tokens=N`)."""
    if not tasks:
        raise InputError("--tasks: expected at least one lmms-eval task name, got none")
    manager = task_manager(tasks, [str(tasks_path()), *([include_path] if include_path else [])])
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        ours = sorted(t for t in manager.all_tasks if t.startswith("onellm"))
        raise InputError(
            f"--tasks: unknown lmms-eval task {', '.join(unknown)} (onellm's: {', '.join(ours)})"
        )
    out = simple_evaluate(
        model=OneLLMChat(model=model, batch_size=batch_size),
        tasks=tasks,
        task_manager=manager,
        limit=limit,
        gen_kwargs=None if max_new_tokens is None else f"max_new_tokens={max_new_tokens}",
        bootstrap_iters=0,  # no stderr: the caption scores are corpus-level
        log_samples=False,
        verbosity="WARNING",
    )
    return {task: clean(r) for task, r in out["results"].items()}


def task_manager(tasks: list[str], paths: list[str]) -> TaskManager:
    """onellm's (and `paths`') tasks alone where they hold every task asked for: indexing
    lmms-eval's ~340 task folders takes ~10 s on a small CPU; else every task."""
    ours = TaskManager("WARNING", include_path=paths, include_defaults=False, model_name="onellm")
    if all(t in ours.all_tasks for t in tasks):
        return ours
    return TaskManager("WARNING", include_path=paths, model_name="onellm")


def clean(result: dict[str, Any]) -> dict[str, Any]:
    """lmms-eval's `metric,filter` keys as `metric`; its stderr entries dropped."""
    kept = {}
    for key, value in result.items():
        name = key.split(",")[0]
        if "_stderr" not in name:
            kept[name] = value
    return kept


def lmms_verb(args: argparse.Namespace) -> int:
    """The `onellm eval --backend lmms-eval` verb: print and write lmms-eval's results."""
    tasks = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    if args.data:  # the shipped tasks read their manifest from here
        os.environ["ONELLM_LMMS_DATA"] = str(Path(args.data).resolve())
    model = load(args.run, args.device, None).eval()
    most = getattr(args, "max_new_tokens", None)  # eval's --max-new-tokens, where given
    results = evaluate_lmms(model, tasks, batch_size=args.batch_size, max_new_tokens=most)
    print(f"lmms-eval {version()}: {', '.join(tasks)}")
    for task, r in results.items():
        got = "  ".join(
            f"{k} {v:.3f}" for k, v in r.items() if isinstance(v, float) and not math.isnan(v)
        )
        print(f"{task:<22} {got}")
    out = Path(args.json) if args.json else Path(args.run) / "eval_lmms.json"
    if args.json or Path(args.run).is_dir():
        out.write_text(json.dumps(results, indent=1, default=str))
        print(f"wrote {out}")
    return 0


def version() -> str:
    return installed_version("lmms-eval")
