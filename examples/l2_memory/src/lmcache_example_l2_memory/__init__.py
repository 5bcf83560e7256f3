"""An example L2 adapter for lmcache-server: objects in process memory (see ``docs/l2-adapters.md``)."""
