"""Profiles: one per person, derived from the event log by the processor."""
