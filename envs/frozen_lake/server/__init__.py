"""The OpenEnv-compatible server of the frozen_lake environment."""
