"""Build the storage backend that the process settings name."""

from __future__ import annotations

from peptide_opt.errors import InputError
from peptide_opt.settings import Settings
from peptide_opt.storage.base import RetryPolicy, Storage


def get_storage(settings: Settings, retry: RetryPolicy | None = None) -> Storage:
    """Return the backend of ``STORAGE_BACKEND`` (``local``, ``filer`` or ``s3``).

    The caller closes it (``async with get_storage(settings) as storage: ...``).
    """
    bucket = settings.seaweed_bucket
    if settings.storage_backend == "local":
        from peptide_opt.storage.local import LocalStorage

        return LocalStorage(settings.storage_local_root, bucket, retry)
    if settings.storage_backend == "filer":
        from peptide_opt.storage.filer import FilerStorage

        return FilerStorage(settings.seaweed_filer_endpoint, bucket, retry)
    if settings.storage_backend == "s3":
        from peptide_opt.storage.s3 import S3Storage

        return S3Storage(
            settings.s3_endpoint,
            bucket,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            retry=retry,
        )
    raise InputError(
        f"STORAGE_BACKEND must be local, filer or s3, got {settings.storage_backend!r}"
    )
