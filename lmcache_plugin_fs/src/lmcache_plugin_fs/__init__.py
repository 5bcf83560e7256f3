"""lmcache-server L2 adapter plugin: filesystem."""
