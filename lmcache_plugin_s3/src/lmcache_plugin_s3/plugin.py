"""The ``s3`` L2 adapter plugin. Installed and discovered like every plugin; it registers no adapter type yet.

The adapter (type name ``s3``) arrives with the L2 issue that builds it; until then
this plugin loads, shows in ``GET /plugins`` with no hooks, and ``--l2-adapter`` with
``"type": "s3"`` is refused at startup as an unknown type.
"""
