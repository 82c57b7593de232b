"""The notebook: the live dashboard and the load-profile tuner."""
