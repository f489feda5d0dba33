"""The pipeline steps, in order: prepare, model, site, dock, score, assemble, design,
rescore, analyze; and the runner that chains them (:mod:`peptide_opt.pipeline.runner`).

Steps take structures and sequences in and give them out. Files, storage and external
programs live in :mod:`peptide_opt.engines` and :mod:`peptide_opt.storage`.
"""

STEPS = (
    "prepare",
    "model",
    "site",
    "dock",
    "score",
    "assemble",
    "design",
    "rescore",
    "analyze",
    "upload",
)
