"""``locust.contrib.fasthttp``: ``FastHttpUser`` and its session."""

from loadpilot.locust.clients import RestSession as FastHttpSession
from loadpilot.locust.users import FastHttpUser

__all__ = ["FastHttpSession", "FastHttpUser"]
