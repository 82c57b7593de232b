"""FastHttpUser's rest(): JSON parsed, assertions counted as failures."""

from locust import FastHttpUser, constant, task


class Api(FastHttpUser):
    wait_time = constant(0.004)

    @task(2)
    def items(self):
        with self.rest("GET", "/json") as r:
            assert r.js["ok"] is True
            assert len(r.js["items"]) == 3

    @task(1)
    def wrong(self):
        with self.rest("GET", "/json", name="wrong") as r:
            assert r.js["items"] == [], "expected no items"

    @task(1)
    def broken(self):
        self.client.get("/status/500", name="broken")
