"""Data recipes: thin command-line tools that build datasets with the library.

Each recipe module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and is
reachable as ``divot-data <recipe> ...`` (or ``python -m data_recipes <recipe> ...``).
"""
