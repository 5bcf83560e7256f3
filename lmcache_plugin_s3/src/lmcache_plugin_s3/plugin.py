"""The ``s3`` L2 adapter plugin: registers the S3 adapter type (boto3).

``--l2-adapter '{"type": "s3", "s3_endpoint": "s3://my-bucket.s3.us-east-1.amazonaws.com",
"s3_region": "us-east-1"}'`` then builds an :class:`~lmcache_plugin_s3.adapter.S3L2Adapter`;
see that module for the config keys, the object format (LMCache's) and the breaker.
"""

from __future__ import annotations

from lmcache_core.api import RegisterL2Adapter, hookimpl
from lmcache_plugin_s3.adapter import TYPE_NAME, S3AdapterConfig, make_adapter


@hookimpl
def lmcache_register_l2_adapters(register: RegisterL2Adapter) -> None:
    """Declare type ``s3``: config :class:`S3AdapterConfig`, factory ``(config, context) -> S3L2Adapter``."""
    register(TYPE_NAME, S3AdapterConfig, make_adapter)
