"""Running: live runs and run directories, the Python side of a run, the built-in target."""
