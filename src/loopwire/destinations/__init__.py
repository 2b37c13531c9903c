"""Destinations: one package each, every package shaped the same (options, mapping, api, client)."""
