"""Jinja2 templates for the code generators (one folder per target, one file per op)."""
