"""lmcache-server route plugin: runtime L2 reconfiguration (``/reconfigure/...``); see :mod:`.plugin`."""
