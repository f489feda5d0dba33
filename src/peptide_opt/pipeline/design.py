"""The ``design`` step: ProteinMPNN redesigns the peptide (chain A) on every pose.

The best design of a pose is the one with the lowest ``score``, ProteinMPNN's mean
negative log-likelihood over the designed peptide (lower is better). A sequence sampled
more than once counts once, represented by its lowest-scoring sample.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from peptide_opt.config import JobConfig
from peptide_opt.errors import InputError
from peptide_opt.pipeline.types import Design, PoseDesigns
from peptide_opt.processes import spawned_pool

logger = logging.getLogger(__name__)

#: The chain of the peptide in every assembled complex.
PEPTIDE_CHAIN = "A"


def design_poses(
    complexes: list[str],
    config: JobConfig,
    engine: Any = None,
    cores: int = 1,
    peptide: str | None = None,
) -> list[PoseDesigns]:
    """Design the peptide of each complex (PDB text, peptide as chain A).

    Every pose is designed with the job's seed ``proteinmpnn_seed``, so the designs of
    one pose do not depend on the other poses, nor on which process designs it. With
    ``cores`` above 1 and no engine given, the poses are shared among that many spawned
    processes of one torch thread each, each loading the model once; ProteinMPNN's
    one-residue-at-a-time sampler gains little from a second thread within a process.
    ``fixed_positions`` and every occurrence of ``keep_motif`` in ``peptide`` (the input
    sequence) become ProteinMPNN's fixed positions; ``omit_amino_acids`` and ``aa_bias``
    of ``config`` go to its sampler.
    """
    fixed_positions = kept_positions(config, peptide)
    controls = {
        "n_sequences": config.num_seq_per_target,
        "temperature": config.sampling_temperature,
        "seed": config.proteinmpnn_seed,
        "fixed_positions": fixed_positions or None,
        "omit_amino_acids": config.omit_amino_acids or "",
        "aa_bias": dict(config.aa_bias) if config.aa_bias else None,
    }
    # A given engine lives in this process, so only the default one is shared out.
    n_processes = min(cores, len(complexes)) if engine is None else 1
    with spawned_pool(n_processes, initializer=_single_thread) as pool:
        if pool is not None:
            jobs = [
                pool.submit(_design_one, None, index, text, controls)
                for index, text in enumerate(complexes, start=1)
            ]
            return [job.result() for job in jobs]
    return [
        _design_one(engine, index, text, controls)
        for index, text in enumerate(complexes, start=1)
    ]


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _design_one(engine: Any, index: int, complex_pdb: str, controls: dict) -> PoseDesigns:
    if engine is None:
        from peptide_opt.engines.base import get_engine

        engine = get_engine("design")
    started = time.perf_counter()
    result = engine.design(complex_pdb, PEPTIDE_CHAIN, **controls)
    logger.info(
        "design_pose_finished",
        extra={
            "step": "design",
            "pose": index,
            "n_designs": len(result.designs),
            "duration": round(time.perf_counter() - started, 3),
        },
    )
    return result


def unique_designs(pose_designs: PoseDesigns) -> list[tuple[Design, int]]:
    """Return each distinct sequence once with the number of times it was sampled.

    A sequence is represented by its lowest-``score`` sample (the earliest one on a
    tie). The list is sorted best first: by ``score``, then by sample number.
    """
    best: dict[str, Design] = {}
    counts: dict[str, int] = {}
    for design in pose_designs.designs:
        counts[design.sequence] = counts.get(design.sequence, 0) + 1
        current = best.get(design.sequence)
        if current is None or _rank_key(design) < _rank_key(current):
            best[design.sequence] = design
    ranked = sorted(best.values(), key=_rank_key)
    return [(design, counts[design.sequence]) for design in ranked]


def choose_best_design(pose_designs: PoseDesigns) -> Design | None:
    """Return the design with the lowest ``score``, or None when there are none."""
    ranked = unique_designs(pose_designs)
    return ranked[0][0] if ranked else None


def _rank_key(design: Design) -> tuple[float, int]:
    return (design.score, design.sample)


def motif_positions(sequence: str, motif: str) -> list[int]:
    """Return the 1-based positions of every occurrence of ``motif`` in ``sequence``,
    overlapping occurrences included."""
    positions: set[int] = set()
    start = sequence.find(motif)
    while start != -1:
        positions.update(range(start + 1, start + len(motif) + 1))
        start = sequence.find(motif, start + 1)
    return sorted(positions)


def kept_positions(config: JobConfig, peptide: str | None) -> list[int]:
    """Return the positions every design keeps: ``fixed_positions`` and the motifs.

    Raises :class:`InputError` for a position past the peptide's length, a motif that
    does not occur in the peptide, and a peptide with every position kept.
    """
    positions = set(parse_positions(config.fixed_positions))
    if peptide is None:
        return sorted(positions)
    beyond = sorted(position for position in positions if position > len(peptide))
    if beyond:
        raise InputError(
            f"fixed_positions: position {beyond[0]} is past the peptide's length of "
            f"{len(peptide)} residues"
        )
    if config.keep_motif:
        found = motif_positions(peptide, config.keep_motif)
        if not found:
            raise InputError(
                f"keep_motif {config.keep_motif} does not occur in the peptide {peptide}"
            )
        positions.update(found)
    if len(positions) >= len(peptide):
        raise InputError(
            f"fixed_positions and keep_motif keep all {len(peptide)} residues of "
            f"{peptide}; at least one position must be designed"
        )
    return sorted(positions)


def parse_positions(text: str | None) -> list[int]:
    """Expand 1-based positions and ranges such as ``"8-10,15"`` to a sorted list.

    Whether the positions lie inside the peptide is checked by :func:`kept_positions`,
    which is given the peptide.
    """
    if not text:
        return []
    positions: set[int] = set()
    for part in re.sub(r"\s+", "", text).split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise InputError(
                f"fixed_positions must be 1-based positions or ranges such as "
                f"'8-10,15', got {text!r}"
            )
        start = int(match.group(1))
        end = int(match.group(2) or start)
        if start < 1 or end < start:
            raise InputError(
                f"fixed_positions: range {part!r} must satisfy 1 <= start <= end"
            )
        positions.update(range(start, end + 1))
    return sorted(positions)


# -- ProteinMPNN FASTA -----------------------------------------------------------------

# key=value fields of a header; a value is a bracketed list or runs to the next comma.
_HEADER_FIELD = re.compile(r"(\w+)=(\[[^\]]*\]|[^,]*)")


def parse_mpnn_fasta(text: str) -> PoseDesigns:
    """Parse the FASTA file that ProteinMPNN writes for one structure.

    The first record is the native sequence (header fields ``score`` and
    ``global_score``), each later record one sample (``T``, ``sample``, ``score``,
    ``global_score``, ``seq_recovery``). Raises :class:`InputError` when a record
    lacks one of these fields.
    """
    records = _fasta_records(text)
    if not records:
        raise InputError("ProteinMPNN FASTA has no records")
    native_header, native_sequence = records[0]
    native_fields = _header_fields(native_header, ("score", "global_score"), 1)

    designs = []
    for number, (header, sequence) in enumerate(records[1:], start=2):
        fields = _header_fields(
            header, ("T", "sample", "score", "global_score", "seq_recovery"), number
        )
        designs.append(
            Design(
                sequence=sequence,
                score=fields["score"],
                global_score=fields["global_score"],
                seq_recovery=fields["seq_recovery"],
                sample=int(fields["sample"]),
                temperature=fields["T"],
            )
        )
    return PoseDesigns(
        native_sequence=native_sequence,
        native_score=native_fields["score"],
        native_global_score=native_fields["global_score"],
        designs=designs,
        fasta_text=text,
    )


def _fasta_records(text: str) -> list[tuple[str, str]]:
    records: list[tuple[str, list[str]]] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(">"):
            records.append((line[1:], []))
        elif not records:
            raise InputError(
                f"ProteinMPNN FASTA line {line_number} is sequence text before the "
                "first '>' header"
            )
        else:
            records[-1][1].append(line)
    return [(header, "".join(lines)) for header, lines in records]


def _header_fields(
    header: str, required: tuple[str, ...], number: int
) -> dict[str, float]:
    fields = dict(_HEADER_FIELD.findall(header))
    values = {}
    for key in required:
        if key not in fields:
            raise InputError(
                f"ProteinMPNN FASTA record {number} lacks the field {key!r}: {header!r}"
            )
        try:
            values[key] = float(fields[key])
        except ValueError:
            raise InputError(
                f"ProteinMPNN FASTA record {number}: {key}={fields[key]!r} is not a "
                "number"
            ) from None
    return values
