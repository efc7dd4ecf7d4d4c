"""Measuring instruments: latency harness, memory probe, budget verdicts."""
