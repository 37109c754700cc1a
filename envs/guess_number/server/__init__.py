"""The OpenEnv-compatible server of the guess_number environment."""
