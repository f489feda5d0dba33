"""peptide-opt: dock a peptide into a receptor, redesign it with ProteinMPNN, report the best designs."""

__version__ = "0.1.0"
