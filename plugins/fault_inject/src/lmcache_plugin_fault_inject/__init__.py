"""lmcache-server L2 adapter plugin ``fault_inject``: see :mod:`.adapter` and the README."""
