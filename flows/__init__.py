"""Prefect flows: orchestration only (retries, artifacts, fan-out); the work is in gan_core."""
