"""lmcache-server inspection routes."""
