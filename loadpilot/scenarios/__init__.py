"""Scenarios: the DSL (``VUser``, ``@scenario``, ``@task``, ``feed``) and scenario files."""
