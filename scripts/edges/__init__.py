"""Edge scenarios for scripts/edge_test.py: one module per scenario, each with run(work, long)."""
