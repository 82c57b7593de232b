"""Event listeners: init, test_start, request, test_stop, quitting."""

from locust import HttpUser, constant, events, task

seen = {"requests": 0, "failed": 0}


@events.init.add_listener
def on_init(environment, **kwargs):
    print("listener: init", flush=True)


@events.test_start.add_listener
def on_start(environment, **kwargs):
    print(f"listener: test_start host={environment.host}", flush=True)


@events.request.add_listener
def on_request(request_type, name, response_time, response_length, exception, **kwargs):
    seen["requests"] += 1
    if exception is not None:
        seen["failed"] += 1


@events.test_stop.add_listener
def on_stop(environment, **kwargs):
    print(f"listener: test_stop requests={seen['requests']} failed={seen['failed']}", flush=True)


@events.quitting.add_listener
def on_quit(environment, **kwargs):
    print("listener: quitting", flush=True)


class Listened(HttpUser):
    wait_time = constant(0.004)

    def __init__(self, environment):
        # A user class may take the environment in an __init__ of its own.
        super().__init__(environment)
        self.where = environment.host

    @task(3)
    def fine(self):
        self.client.get("/fine")

    @task(1)
    def bad(self):
        self.client.get("/status/404", name="bad")
