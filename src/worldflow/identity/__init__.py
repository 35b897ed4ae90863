"""Identity resolution: which identities an event carries, and how they may link profiles."""
