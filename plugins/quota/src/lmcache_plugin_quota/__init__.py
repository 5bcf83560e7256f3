"""lmcache-server route plugin: per-``cache_salt`` quotas (``/quota`` routes); see :mod:`.plugin`."""
