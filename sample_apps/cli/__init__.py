"""Classify lines of text from stdin or files: `python -m sample_apps.cli.classify BUNDLE`."""
