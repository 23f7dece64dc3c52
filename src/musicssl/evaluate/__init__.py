"""Downstream evaluation: frozen features probed on MIR tasks (the paper's 13, MARBLE v1 protocol)."""
