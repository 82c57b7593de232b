"""TaskSets as Locust's documentation shows them: nested, inline, sequential, interrupt()."""

import time

from locust import HttpUser, SequentialTaskSet, TaskSet, constant, tag, task


class Checkout(SequentialTaskSet):
    @task
    def cart(self):
        self.client.get("/cart")

    @task
    def pay(self):
        time.sleep(0.002)  # a blocking call pauses this user only
        self.client.post("/pay", data={"card": "4111"})

    @task
    def done(self):
        self.interrupt()


class Browse(TaskSet):
    wait_time = constant(0.002)

    @task(3)
    def item(self):
        self.client.get("/browse/item")

    @task(1)
    class Reviews(TaskSet):
        @task
        def read(self):
            self.client.get("/browse/reviews")
            self.interrupt()

    @task(1)
    def leave(self):
        self.interrupt()


class Shopper(HttpUser):
    wait_time = constant(0.004)
    tasks = {Browse: 2, Checkout: 1}

    @tag("account")
    @task(1)
    def account(self):
        self.client.get("/account")
