"""relay deliver package."""
