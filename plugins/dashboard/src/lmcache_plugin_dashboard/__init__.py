"""lmcache-server route plugin: a live dashboard for one server and a fleet (``GET /dashboard``)."""
