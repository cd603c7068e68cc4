"""Evaluation: metrics computed from decoded videos (no access to model internals)."""
