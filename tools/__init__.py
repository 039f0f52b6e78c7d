"""relay tools package."""
