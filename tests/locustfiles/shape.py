"""A LoadTestShape: 2 users for 2 s, then 4 users until 4 s, then stop."""

from locust import HttpUser, LoadTestShape, constant, task


class Stepped(LoadTestShape):
    def tick(self):
        t = self.get_run_time()
        if t < 2:
            return (2, 10)
        if t < 4:
            return (4, 10)
        return None


class Walker(HttpUser):
    wait_time = constant(0.01)

    @task
    def walk(self):
        self.client.get("/walk")
