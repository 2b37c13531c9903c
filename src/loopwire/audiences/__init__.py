"""Audiences: declarative definitions, membership, and deterministic holdouts (`holdouts.py`)."""
