"""Postgres: the placement's source of truth (inventory, capacity, placements, events)."""
