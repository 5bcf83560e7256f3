"""LMCache 0.5.6's HTTP route generation for lmcache-server (see :mod:`lmcache_plugin_api056.plugin`)."""
