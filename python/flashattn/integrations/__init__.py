"""Integrations of flashattn with other libraries (imported on demand)."""
