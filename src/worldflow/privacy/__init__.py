"""Privacy by design: consent by purpose, privacy tiers, minimisation."""
