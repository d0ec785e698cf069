"""Errors as a person reads them: which ones print as one line, and what to do next about S3 set-up."""

from __future__ import annotations

import os


class DataError(ValueError):
    """Input data that cannot be used; the message names the file."""

S3_SETUP_HINT = ("run `source .ganforge/s3.env` (written by `make run` or `ganforge s3 start`), or set "
                 "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")


def readable_errors() -> tuple[type[Exception], ...]:
    # Evaluated only once an error is raised: botocore is not imported by commands that do not need it.
    from botocore.exceptions import BotoCoreError, ClientError
    return ValueError, OSError, RuntimeError, BotoCoreError, ClientError


def setup_hint(error: BaseException) -> str:
    """What to do next when ERROR comes from S3 not being configured in this shell, else ""."""
    from botocore.exceptions import ConnectionError as S3ConnectionError

    unset = not (os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3"))
    return f" (no S3 endpoint set: {S3_SETUP_HINT})" if unset and isinstance(error, S3ConnectionError) else ""
