"""lmcache-server L2 adapter plugin: Device-DAX (mmap arena, runtime reconfiguration)."""
