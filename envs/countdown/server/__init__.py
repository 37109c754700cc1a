"""The OpenEnv-compatible server of the countdown environment."""
