"""Upstream providers, one module per wire protocol."""
