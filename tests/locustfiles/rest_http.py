"""HttpUser's rest() and rest_(): JSON headers unless the task gives its own, r.js, and an
exception in the block failing the request."""

from locust import HttpUser, constant, task


class Api(HttpUser):
    wait_time = constant(0.004)

    @task(2)
    def fresh(self):
        with self.rest_("GET", "/json") as r:
            assert r.js["ok"] is True

    @task(1)
    def typed(self):
        sent = {"n": 1}
        with self.rest(
            "POST", "/echo", json=sent, headers={"content-type": "application/merge-patch+json"}
        ) as r:
            assert r.js == sent

    @task(1)
    def broken(self):
        with self.rest("GET", "/json", name="broken") as r:
            r.js["missing"]
