"""lmcache-server route plugin: diagnostics."""
