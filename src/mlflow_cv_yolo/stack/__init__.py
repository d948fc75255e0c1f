"""The services the suite tracks to: MySQL, S3 and an MLflow server, by provider."""

from .process import ServiceError
from .providers import KINDS, Stack, StackInfo, choose, make_stack

__all__ = ["KINDS", "ServiceError", "Stack", "StackInfo", "choose", "make_stack"]
