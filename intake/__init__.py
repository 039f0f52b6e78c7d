"""relay intake package."""
