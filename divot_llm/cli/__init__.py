"""Thin entry points (console scripts) over the library."""
