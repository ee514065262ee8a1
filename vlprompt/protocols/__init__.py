"""Evaluation protocols as Lightning data modules."""
