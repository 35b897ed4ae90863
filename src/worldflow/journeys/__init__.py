"""Journeys: definitions, the engine that runs them per profile, and their API."""
