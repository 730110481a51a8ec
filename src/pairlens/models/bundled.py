"""Bundled models (filled in by the bundled-model work)."""
