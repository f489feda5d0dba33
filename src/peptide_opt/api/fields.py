"""The config keys a submission may set (shared by the API and its client)."""

from peptide_opt.config import CONFIG_KEYS

#: Config keys that the API sets itself from the submitted files.
SERVER_KEYS = frozenset(
    {"peptide_sequence", "receptor_pdb_filename", "storage_prefix", "receptor_storage_key"}
)
#: The config keys a submission may set, in the order optimization_config.txt lists them.
USER_KEYS = tuple(key for key in CONFIG_KEYS if key not in SERVER_KEYS)
