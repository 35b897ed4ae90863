"""Decisions: offers and placements, the decision API, bandits and recommendations."""
