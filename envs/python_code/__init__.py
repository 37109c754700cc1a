"""python_code: write a Python function, run code in a sandbox, submit; hidden tests score it."""

from envs.python_code.env import PythonCodeEnv
from envs.python_code.models import CodeAction, CodeObservation, CodeState
from envs.python_code.tasks import TASKS, CodeTask, make_task_dataset, task_from_row

__all__ = [
    "CodeAction",
    "CodeObservation",
    "CodeState",
    "CodeTask",
    "PythonCodeEnv",
    "TASKS",
    "make_task_dataset",
    "task_from_row",
]
