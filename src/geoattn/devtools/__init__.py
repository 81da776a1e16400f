"""Contributor tooling: not imported by the library or the chapters."""
