"""Several user classes: one fixed admin, the other users shared 3:1 by weight."""

from locust import HttpUser, constant, task


class Admin(HttpUser):
    fixed_count = 1
    wait_time = constant(0.01)

    @task
    def admin(self):
        self.client.get("/admin")


class Reader(HttpUser):
    weight = 3
    wait_time = constant(0.01)

    @task
    def read(self):
        self.client.get("/read")


class Writer(HttpUser):
    weight = 1
    wait_time = constant(0.01)

    @task
    def write(self):
        self.client.post("/write", data={"x": "1"})
