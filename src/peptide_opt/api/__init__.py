"""The HTTP API (``peptide-opt serve``), its users and keys, and the web page."""
