"""Prefect flows of the Feature Atlas."""
