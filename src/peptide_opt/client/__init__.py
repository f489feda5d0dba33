"""The HTTP client of a peptide-opt server (``peptide-opt submit|status|wait|download``)."""
