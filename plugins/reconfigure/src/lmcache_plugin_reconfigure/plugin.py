"""The reconfigure route group. Installed and discovered like every plugin; it implements no hooks yet.

Its routes arrive with the issue that builds them; until then the plugin loads,
shows in ``GET /plugins`` with no hooks, and contributes nothing.
"""
