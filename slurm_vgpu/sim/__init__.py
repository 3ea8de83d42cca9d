"""Trace simulator: replays GPU traces through the shared placement policy (FGD paper protocol)."""
