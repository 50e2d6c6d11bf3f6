"""Example models, real data sets and measurement scripts (not part of the installed package)."""
