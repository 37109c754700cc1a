"""Countdown: reach a target number from a few numbers with + - * /, using a calculator tool."""

from envs.countdown.calculator import CalculatorError, evaluate, format_value
from envs.countdown.env import TOOLS, CountdownConfig, CountdownEnv, Verdict, check_submission
from envs.countdown.models import (
    CountdownAction,
    CountdownObservation,
    CountdownState,
    ToolCallError,
)
from envs.countdown.tasks import CountdownTask, generate_task, make_task_dataset

__all__ = [
    "CalculatorError",
    "CountdownAction",
    "CountdownConfig",
    "CountdownEnv",
    "CountdownObservation",
    "CountdownState",
    "CountdownTask",
    "TOOLS",
    "ToolCallError",
    "Verdict",
    "check_submission",
    "evaluate",
    "format_value",
    "generate_task",
    "make_task_dataset",
]
