"""The OpenEnv-compatible server of the python_code environment."""
