"""Experiments: YAML configs → runs → metrics files (and, later, comparisons and reports)."""
