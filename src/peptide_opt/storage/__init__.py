"""Object storage: a local folder, the SeaweedFS Filer or S3, in the platform's layout.

Build a backend with :func:`get_storage` and use it as an async context manager::

    async with get_storage(Settings.from_env()) as storage:
        job_dir = await fetch_job_inputs(storage, prefix, workdir)
        ...
        await upload_outputs(storage, prefix, output_dir)
"""

from peptide_opt.storage.base import (
    ObjectInfo,
    ObjectNotFoundError,
    RetryPolicy,
    Storage,
)
from peptide_opt.storage.factory import get_storage
from peptide_opt.storage.jobs import (
    MANIFEST_NAME,
    fetch_job_inputs,
    fetch_job_inputs_sync,
    outputs_complete,
    read_manifest,
    store_job_inputs,
    upload_outputs,
    upload_outputs_sync,
)
from peptide_opt.storage.keys import (
    JOB_ROOT,
    InvalidKeyError,
    job_prefix,
    join_key,
    resolve_job_prefix,
    validate_key,
)

__all__ = [
    "JOB_ROOT",
    "MANIFEST_NAME",
    "InvalidKeyError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "RetryPolicy",
    "Storage",
    "fetch_job_inputs",
    "fetch_job_inputs_sync",
    "get_storage",
    "job_prefix",
    "join_key",
    "outputs_complete",
    "read_manifest",
    "resolve_job_prefix",
    "store_job_inputs",
    "upload_outputs",
    "upload_outputs_sync",
    "validate_key",
]
