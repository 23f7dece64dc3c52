"""Pre-training utilities (learning-rate schedules, method-spec)."""
