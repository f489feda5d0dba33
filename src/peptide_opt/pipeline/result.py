"""Step ``analyze``: the result record of a job, from the results of every step.

The record is what result.json contains after the platform's ``results`` list. Each pose
lists every distinct design with both ProteinMPNN scores and its sample count, and, when
designs were re-scored, their Vina affinities and interface contacts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from peptide_opt import __version__
from peptide_opt.pipeline import analyze

#: DesignScore fields that are files, not values of result.json.
_FILE_FIELDS = ("peptide_pdb", "complex_pdb", "complex_text")


def build_result(run: Any) -> dict[str, Any]:
    """Build the result record from a finished run's step results."""
    from peptide_opt.engines.base import get_engine

    sequence = run.inputs.peptide
    cache: dict[str, dict[str, Any]] = {sequence: analyze.peptide_properties(sequence)}

    def properties(seq: str) -> dict[str, Any]:
        if seq not in cache:
            cache[seq] = analyze.peptide_properties(seq)
        return cache[seq]

    rounds = _plain(run.rounds) if run.rounds is not None else None
    contacts = None
    if run.design_scores:
        from peptide_opt.pipeline.rescore import input_contacts

        contacts = input_contacts(run.receptor, run.poses)
    pose_records = []
    for index, (pose, assembled) in enumerate(zip(run.poses, run.complexes)):
        designs = run.pose_designs[index] if run.pose_designs else None
        scores = run.design_scores[index] if run.design_scores else None
        record = _pose_record(
            pose, assembled, designs, scores, run.config, sequence, properties
        )
        if contacts is not None:
            record["input_contacts"] = contacts[index].to_dict()
        if rounds is not None and rounds["best"][index] is not None:
            _take_round_best(record, rounds["best"][index], properties)
        pose_records.append(record)
    if rounds is not None:
        for best in rounds["best"]:
            for name in _FILE_FIELDS:
                if best is not None:
                    best.pop(name, None)

    engines = {"docking": _engine_info(get_engine("docking"))}
    if run.config.proteinmpnn_enabled:
        engines["design"] = _engine_info(get_engine("design"))
    warnings = list(run.warnings)
    for message in run.receptor.warnings:
        if message not in warnings:
            warnings.append(message)
    for assembled in run.complexes:
        for message in assembled.warnings:
            if message not in warnings:
                warnings.append(message)
    # A docking engine reports how it had to depart from its usual method per pose.
    for pose in run.poses:
        message = pose.detail.get("warning")
        if message and message not in warnings:
            warnings.append(message)
    if not run.config.proteinmpnn_enabled:
        warnings.append(
            "proteinmpnn_enabled is False: the design step was skipped and each pose "
            "reports the input peptide"
        )
    record = {
        "peptide_opt_version": __version__,
        "input": {
            "sequence": sequence,
            "receptor_file": run.inputs.receptor_path.name,
            "receptor_chains": list(run.receptor.chain_ids),
            "properties": cache[sequence],
        },
        "site": run.site.to_dict(),
        "chain_map": run.complexes[0].chain_map if run.complexes else {},
        "selection": run.config.selection if run.design_scores else "mpnn",
        "poses": pose_records,
        "engines": engines,
        "parameters": run.config.to_dict(),
        "cores": run.cores,
        "timings": dict(run.timings),
        "warnings": warnings,
    }
    if rounds is not None:
        record["rounds"] = rounds
    return record


def _take_round_best(record: dict[str, Any], best: dict[str, Any], properties) -> None:
    """Make the best design over all rounds the pose's chosen design."""
    chosen = {
        key: best.get(key)
        for key in ("sequence", "score", "global_score", "seq_recovery", "affinity")
    }
    chosen["affinity_delta"] = best.get("affinity_delta")
    chosen["properties"] = properties(best["sequence"])
    record["best_design"] = chosen
    text = best.get("complex_pdb") or best.get("complex_text")
    if text:
        record["design_file"] = f"design{record['rank']}.pdb"
        record["design_pdb_text"] = text


def _pose_record(
    pose, assembled, designs, scores, config, sequence: str, properties
) -> dict[str, Any]:
    suffix = "pdb" if assembled.format == "pdb" else "cif"
    record: dict[str, Any] = {
        "rank": pose.rank,
        "affinity": pose.affinity,
        "docking_affinity": pose.docking_affinity,
        "complex_file": f"complex{pose.rank}.{suffix}",
        "detail": _plain(pose.detail),
        "native_score": None,
        "native_global_score": None,
        "designs": [],
    }
    if designs is None:
        record["best_design"] = {
            "sequence": sequence,
            "score": None,
            "global_score": None,
            "properties": properties(sequence),
        }
        return record

    from peptide_opt.pipeline.design import choose_best_design, unique_designs

    record["native_score"] = designs.native_score
    record["native_global_score"] = designs.native_global_score
    by_sequence = {score.sequence: score for score in scores} if scores else {}
    for design, count in unique_designs(designs):
        entry = {
            "sequence": design.sequence,
            "score": design.score,
            "global_score": design.global_score,
            "seq_recovery": design.seq_recovery,
            "n_samples": count,
            "properties": properties(design.sequence),
        }
        if design.sequence in by_sequence:
            entry.update(_score_fields(by_sequence[design.sequence]))
        record["designs"].append(entry)

    if scores:
        from peptide_opt.pipeline.rescore import choose_design

        chosen = choose_design(pose, designs, scores, config.selection)
    else:
        chosen = choose_best_design(designs)
    best = next(entry for entry in record["designs"] if entry["sequence"] == chosen.sequence)
    record["best_design"] = dict(best)
    chosen_score = by_sequence.get(chosen.sequence)
    if chosen_score is not None:
        text = getattr(chosen_score, "complex_pdb", None) or getattr(
            chosen_score, "complex_text", None
        )
        if text:
            record["design_file"] = f"design{pose.rank}.pdb"
            record["design_pdb_text"] = text
    return record


def _score_fields(score: Any) -> dict[str, Any]:
    fields = dataclasses.asdict(score) if dataclasses.is_dataclass(score) else dict(score)
    for name in _FILE_FIELDS + ("sequence", "score", "global_score", "seq_recovery", "n_samples"):
        fields.pop(name, None)
    return _plain(fields)


def _engine_info(engine: Any) -> dict[str, str]:
    return {"name": engine.name, "version": engine.version}


def _plain(value: Any) -> Any:
    """Return ``value`` with dataclasses, tuples and arrays turned into JSON types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
