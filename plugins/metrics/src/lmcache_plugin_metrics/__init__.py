"""lmcache-server route plugin: metrics."""
