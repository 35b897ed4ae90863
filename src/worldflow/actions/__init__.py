"""Actions: the outbox dispatchers that deliver what journeys decided (webhooks for now)."""
