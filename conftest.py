"""Repository-level pytest setup.

The L2 backend distributions live in folders named like their import packages
(``lmcache_plugin_fs/`` holds ``src/lmcache_plugin_fs/``). Under
``--import-mode=importlib`` pytest names a test module after its path
(``lmcache_plugin_fs.tests.test_x``) and would register a placeholder
``lmcache_plugin_fs`` module for the folder, shadowing the installed package.
Importing the installed packages first keeps the real ones in ``sys.modules``.
"""

import importlib

for _name in ("lmcache_plugin_fs", "lmcache_plugin_s3", "lmcache_plugin_dax"):
    try:
        importlib.import_module(_name)
    except ImportError:  # not installed: its tests will say so
        pass
