"""Worldflow: open-source marketing automation for virtual worlds."""

__version__ = "0.1.0"
