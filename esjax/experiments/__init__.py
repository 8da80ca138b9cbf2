"""Experiments: YAML configs → runs → metrics files, comparisons and reports."""

__all__: list[str] = []
