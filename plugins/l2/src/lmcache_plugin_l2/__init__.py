"""lmcache-server route plugin: l2."""
