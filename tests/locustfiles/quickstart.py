"""Locust's quickstart, as its documentation shows it (the login body fits the test server)."""

from locust import HttpUser, between, task


class QuickstartUser(HttpUser):
    wait_time = between(0.005, 0.015)

    @task
    def hello_world(self):
        self.client.get("/hello")
        self.client.get("/world")

    @task(3)
    def view_items(self):
        for item_id in range(10):
            self.client.get(f"/item?id={item_id}", name="/item")

    def on_start(self):
        self.client.post("/login", json={"user": "foo", "password": "bar"})
