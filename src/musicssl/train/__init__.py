"""Pre-training utilities (learning-rate schedules, docs/method.md §3.8, §4.5)."""
