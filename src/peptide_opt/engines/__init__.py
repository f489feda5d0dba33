"""Wrappers of external tools and models, one module per tool.

Each wrapper owns its tool's command line or API, its input files and the parsing of its
output, and turns the tool's failures into :class:`peptide_opt.errors.EngineError`. The
interfaces the pipeline calls are in :mod:`peptide_opt.engines.base`.
"""
