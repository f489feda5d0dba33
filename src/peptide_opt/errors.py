"""The exceptions of peptide-opt; every one derives from :class:`PeptideOptError`."""


class PeptideOptError(Exception):
    """An error that peptide-opt reports to its user as a message, without a traceback."""

    exit_code = 1


class InputError(PeptideOptError):
    """Invalid input: a bad sequence, structure, config value or file name.

    The message names the input, the limit and the value. The command line exits with 2.
    """

    exit_code = 2


class EngineError(PeptideOptError):
    """An external tool or model (Vina, ProteinMPNN, PDBFixer, ...) failed."""


class StorageError(PeptideOptError):
    """Object storage failed or refused a key."""


class TaskCancelled(PeptideOptError):
    """The task was cancelled while it ran."""
