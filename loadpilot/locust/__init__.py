"""Locust's API, run by LoadPilot: a locustfile's ``from locust import ...`` resolves here
while ``loadpilot locust`` (or ``loadpilot run``) reads and runs it. See docs/locust.md."""

from loadpilot.locust.clients import HttpSession, RestSession
from loadpilot.locust.debug import run_single_user
from loadpilot.locust.environment import Environment
from loadpilot.locust.events import events
from loadpilot.locust.users import (
    CatchResponseError,
    FastHttpUser,
    HttpUser,
    InterruptTaskSet,
    LoadTestShape,
    LocustError,
    MarkovTaskSet,
    RescheduleTask,
    RescheduleTaskImmediately,
    ResponseError,
    SequentialTaskSet,
    StopUser,
    TaskSet,
    User,
    between,
    constant,
    constant_pacing,
    constant_throughput,
    tag,
    task,
    transition,
    transitions,
)

__version__ = "2.0.0+loadpilot"

__all__ = [
    "CatchResponseError",
    "Environment",
    "FastHttpUser",
    "HttpSession",
    "HttpUser",
    "InterruptTaskSet",
    "LoadTestShape",
    "LocustError",
    "MarkovTaskSet",
    "RescheduleTask",
    "RescheduleTaskImmediately",
    "ResponseError",
    "RestSession",
    "SequentialTaskSet",
    "StopUser",
    "TaskSet",
    "User",
    "between",
    "constant",
    "constant_pacing",
    "constant_throughput",
    "events",
    "run_single_user",
    "tag",
    "task",
    "transition",
    "transitions",
]
