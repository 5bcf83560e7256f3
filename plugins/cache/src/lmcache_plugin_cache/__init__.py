"""lmcache-server route plugin: cache."""
