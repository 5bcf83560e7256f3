"""lmcache-server health routes: ``GET /`` and ``GET /healthcheck``."""
