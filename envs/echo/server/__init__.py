"""The OpenEnv-compatible server of the echo environment."""
