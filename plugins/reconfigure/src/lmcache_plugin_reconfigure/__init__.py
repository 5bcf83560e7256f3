"""lmcache-server route plugin: reconfigure."""
