"""The instructor's tools: release student notebooks from solutions/, validate a notebook."""
