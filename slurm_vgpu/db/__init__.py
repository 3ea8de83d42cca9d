"""Postgres: the placement's source of truth (inventory, capacity, placements, events)."""

# libpq options for every connection of ours, the prolog's included. The capacity guard refuses
# placement writes above READ COMMITTED (migration 0003): a server whose default is higher must not
# turn each of our writes into a refusal.
CONNECT_OPTIONS = r"-c default_transaction_isolation=read\ committed"
