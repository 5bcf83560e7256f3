"""A fixture plugin whose import fails."""

raise RuntimeError("boom: fixture plugin cannot import")
