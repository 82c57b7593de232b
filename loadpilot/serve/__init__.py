"""Driving runs from outside: `loadpilot serve`, an HTTP API that takes plans and streams rows
and summaries back (``api``)."""
