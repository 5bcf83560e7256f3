"""lmcache-server L2 adapter plugin: S3 (boto3)."""
