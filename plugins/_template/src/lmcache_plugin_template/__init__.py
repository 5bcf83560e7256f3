"""A template lmcache-server plugin."""
