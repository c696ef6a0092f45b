"""Typed schemas for every YAML section, and the one place that turns config into a checked object."""
