"""robopretrain package."""
