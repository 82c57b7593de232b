"""Distributed runs over NATS: agents run exact slices of one schedule (``agent``), a
coordinator adds up what they report into one run (``coordinator``), and a NATS server of the
run's own when none is given (``server``)."""
