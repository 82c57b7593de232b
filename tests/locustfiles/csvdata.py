"""Test data from a CSV file: each user takes the next row when it starts."""

import csv
import itertools
import os
import threading

from locust import HttpUser, constant_pacing, task

with open(os.path.join(os.path.dirname(__file__), "users.csv")) as f:
    ROWS = [r["user"] for r in csv.DictReader(f)]
NEXT = itertools.cycle(ROWS)
LOCK = threading.Lock()


class CsvUser(HttpUser):
    wait_time = constant_pacing(0.01)

    def __init__(self, environment):
        super().__init__(environment)
        self.rows_seen = 0

    def on_start(self):
        with LOCK:
            self.name = next(NEXT)
        self.client.post("/login", json={"user": self.name})

    @task
    def profile(self):
        self.client.get(f"/profile/{self.name}", name="/profile/[user]")
