"""The result files: result.csv, result.json, complexes, designs.fasta, manifest.json.

``result.csv`` has the platform's columns and row labels; ``result.json`` carries the
platform's ``results`` list (camelCase keys, one object per pose in rank order) and
everything else: every design with both ProteinMPNN scores, the site, engines,
parameters, per-step timings, warnings and the chain-ID mapping.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Any

RESULT_COLUMNS = (
    "Index",
    "Original sequence affinity score",
    "Original sequence global score",
    "Optimal sequence",
    "Global score",
    "Molecular weight",
    "Isoelectric point",
    "Aromaticity",
    "Instability index",
    "Hydrophobicity",
    "Hydrophilicity",
    "Secondary structure fraction (Helix, Turn, Sheet)",
)
INPUT_ROW_LABEL = "Input peptide property"
POSE_ROW_LABEL = "Docking result rank {rank}"
MISSING = "-"
MANIFEST_NAME = "manifest.json"


def property_columns(properties: dict[str, Any]) -> list[Any]:
    """Return the seven property columns of result.csv for one sequence."""
    return [
        properties["molecular_weight"],
        properties["isoelectric_point"],
        properties["aromaticity"],
        properties["instability_index"],
        properties["gravy"],
        properties["hydrophilicity"],
        str(tuple(properties["secondary_structure_fraction"])),
    ]


def camel_properties(properties: dict[str, Any]) -> dict[str, Any]:
    """Return the properties under the platform's result.json keys."""
    helix, turn, sheet = properties["secondary_structure_fraction"]
    return {
        "molecularWeight": properties["molecular_weight"],
        "isoelectricPoint": properties["isoelectric_point"],
        "aromaticity": properties["aromaticity"],
        "instabilityIndex": properties["instability_index"],
        "hydrophobicity": properties["gravy"],
        "hydrophilicity": properties["hydrophilicity"],
        "secondaryStructureFraction": str((helix, turn, sheet)),
        "netChargeAtPh7_4": properties["net_charge_ph_7_4"],
    }


def write_result_csv(path: Path, result: dict[str, Any]) -> None:
    """Write result.csv from the ``result`` dictionary that result.json holds."""
    rows: list[list[Any]] = []
    peptide = result["input"]
    rows.append(
        [INPUT_ROW_LABEL, MISSING, MISSING, peptide["sequence"], MISSING]
        + property_columns(peptide["properties"])
    )
    for pose in result["poses"]:
        best = pose["best_design"]
        rows.append(
            [
                POSE_ROW_LABEL.format(rank=pose["rank"]),
                _format_number(pose["affinity"], 3),
                _format_number(pose.get("native_global_score"), 4),
                best["sequence"],
                _format_number(best.get("global_score"), 4),
            ]
            + property_columns(best["properties"])
        )
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(RESULT_COLUMNS)
        writer.writerows(rows)


def platform_results(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the platform's ``results`` list: one camelCase object per pose."""
    original = result["input"]["sequence"]
    entries = []
    for pose in result["poses"]:
        best = pose["best_design"]
        entry = {
            "rank": pose["rank"],
            "originalSequence": original,
            "originalSequenceAffinityScore": pose["affinity"],
            "originalSequenceGlobalScore": pose.get("native_global_score"),
            "optimalSequence": best["sequence"],
            "globalScore": best.get("global_score"),
        }
        entry.update(camel_properties(best["properties"]))
        entry.update(
            {
                "originalSequenceScore": pose.get("native_score"),
                "optimalSequenceScore": best.get("score"),
                "complexFile": pose["complex_file"],
            }
        )
        entries.append(entry)
    return entries


def write_result_json(path: Path, result: dict[str, Any]) -> None:
    """Write result.json: the platform's ``results`` list first, then the full record."""
    document = {"results": platform_results(result)}
    document.update(result)
    path.write_text(json.dumps(document, indent=2, default=_json_default) + "\n")


def write_designs_fasta(path: Path, result: dict[str, Any]) -> None:
    """Write every distinct design of every pose, best first within a pose."""
    lines = []
    for pose in result["poses"]:
        for index, design in enumerate(pose["designs"], start=1):
            lines.append(
                f">pose{pose['rank']}_design{index} score={design['score']:.4f} "
                f"global_score={design['global_score']:.4f} "
                f"seq_recovery={design['seq_recovery']:.4f} "
                f"n_samples={design['n_samples']}"
            )
            lines.append(design["sequence"])
    path.write_text("\n".join(lines) + ("\n" if lines else ""))


def sha256_of(path: Path) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: File names this module writes; an earlier run's files of these names are removed.
OUTPUT_PATTERNS = (
    "result.csv",
    "result.json",
    "designs.fasta",
    MANIFEST_NAME,
    "complex[0-9]*.pdb",
    "complex[0-9]*.cif",
    "design[0-9]*.pdb",
)


def remove_previous_outputs(output_dir: Path) -> None:
    """Delete the result files an earlier run left in ``output_dir`` (run.log and the
    .work checkpoints stay)."""
    for pattern in OUTPUT_PATTERNS:
        for path in output_dir.glob(pattern):
            if path.is_file():
                path.unlink()


def write_manifest(output_dir: Path) -> dict[str, Any]:
    """Write manifest.json listing every other file of ``output_dir`` (size, sha256).

    Files in hidden folders (the ``.work`` checkpoints) are not outputs and are left
    out. The manifest is written last, so its presence marks the outputs as complete.
    """
    files = []
    for path in sorted(output_dir.rglob("*")):
        relative = path.relative_to(output_dir)
        if not path.is_file() or relative.name == MANIFEST_NAME:
            continue
        if any(part.startswith(".") for part in relative.parts):
            continue
        files.append(
            {
                "name": relative.as_posix(),
                "size": path.stat().st_size,
                "sha256": sha256_of(path),
            }
        )
    manifest = {"files": files}
    temporary = output_dir / f".{MANIFEST_NAME}.tmp"
    temporary.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(temporary, output_dir / MANIFEST_NAME)
    return manifest


def _format_number(value: float | None, digits: int) -> str:
    if value is None:
        return MISSING
    return f"{value:.{digits}f}"


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
