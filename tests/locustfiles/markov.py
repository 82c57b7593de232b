"""A MarkovTaskSet: each user starts at its first task (index), then goes on by the
transitions' weights; every request names its user, so each user's walk can be read back."""

import itertools

from locust import HttpUser, MarkovTaskSet, constant, transition, transitions

ids = itertools.count()


class Shopper(MarkovTaskSet):
    @transition("browse")
    def index(self):
        self.visit("index")

    @transition("index", weight=3)
    @transition("product", weight=1)
    def browse(self):
        self.visit("browse")

    @transitions({"index": 1, "cart": 2})
    def product(self):
        self.visit("product")

    @transitions([("checkout", 1), "browse"])
    def cart(self):
        self.visit("cart")

    @transitions(["index"])
    def checkout(self):
        self.visit("checkout")

    def visit(self, page):
        self.client.get(f"/{page}?u={self.user.uid}", name=page)


class Buyer(HttpUser):
    wait_time = constant(0.002)
    tasks = [Shopper]

    def on_start(self):
        self.uid = next(ids)
