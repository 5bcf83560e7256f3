"""lmcache-server route plugin: quota."""
