"""Subcommands of the ``asvit`` CLI: each module wires one command's arguments to library code and
exposes ``add_parser(subparsers)``, which sets ``func`` on its parser."""
