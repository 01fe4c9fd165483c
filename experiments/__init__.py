"""Exploration scripts behind the published figures; each runs from the repository root as
``python -m experiments.<name>`` (see its docstring)."""
