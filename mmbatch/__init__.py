"""mmbatch: transparent checkpoint/restore for AWS Batch jobs on ECS."""

__version__ = "0.1.0"
