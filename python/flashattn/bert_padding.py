"""Padding helpers of FlashAttention (flash_attn.bert_padding): move between
padded (batch, seqlen, ...) tensors and the packed (total_tokens, ...) layout
of the varlen functions. Plain torch indexing, so autograd flows through.
"""

import torch
import torch.nn.functional as F


def index_first_axis(x, indices):
    """x (n, ...) -> x[indices] (len(indices), ...)."""
    return x[indices]


def index_put_first_axis(values, indices, first_axis_dim):
    """values (len(indices), ...) -> (first_axis_dim, ...), zeros elsewhere."""
    out = values.new_zeros((first_axis_dim,) + tuple(values.shape[1:]))
    return out.index_put((indices,), values)


def _cu_seqlens(seqlens):
    return F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))


def unpad_input(hidden_states, attention_mask, unused_mask=None):
    """Pack the tokens selected by a padding mask.

    hidden_states (batch, seqlen, ...); attention_mask (batch, seqlen), bool
    or int, nonzero = a real token; unused_mask (batch, seqlen), optional:
    tokens allocated but unused (selected too, but not counted in seqused).
    Returns (hidden_states (total, ...), indices (total,) into the flattened
    (batch * seqlen) tokens, cu_seqlens int32 (batch + 1,),
    max_seqlen_in_batch (int), seqused int32 (batch,)).
    """
    selected = attention_mask.bool()
    if unused_mask is not None:
        selected = selected | unused_mask.bool()
    seqlens = selected.sum(dim=-1, dtype=torch.int32)
    seqused = attention_mask.bool().sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(selected.flatten(), as_tuple=False).flatten()
    max_seqlen = int(seqlens.max().item()) if seqlens.numel() else 0
    flat = hidden_states.reshape((-1,) + tuple(hidden_states.shape[2:]))
    return index_first_axis(flat, indices), indices, _cu_seqlens(seqlens), max_seqlen, seqused


def unpad_input_for_concatenated_sequences(hidden_states, attention_mask_in_length):
    """Pack rows that each hold several concatenated sequences.

    attention_mask_in_length (batch, seqlen), int: row b lists the lengths of
    the sequences concatenated in it, then zeros (e.g. [2, 3, 0, 0, 0]).
    Returns (hidden_states (total, ...), indices, cu_seqlens int32 over all
    the sequences, max_seqlen_in_batch).
    """
    lengths = attention_mask_in_length
    seqlen = lengths.shape[-1]
    used = torch.arange(seqlen, device=lengths.device).view(1, -1) < lengths.sum(-1, keepdim=True)
    seqlens = lengths.flatten()[lengths.flatten() > 0].to(torch.int32)
    indices = torch.nonzero(used.flatten(), as_tuple=False).flatten()
    max_seqlen = int(seqlens.max().item()) if seqlens.numel() else 0
    flat = hidden_states.reshape((-1,) + tuple(hidden_states.shape[2:]))
    return index_first_axis(flat, indices), indices, _cu_seqlens(seqlens), max_seqlen


def pad_input(hidden_states, indices, batch, seqlen):
    """Inverse of unpad_input: hidden_states (total, ...) -> (batch, seqlen,
    ...) with zeros at the padding positions."""
    out = index_put_first_axis(hidden_states, indices, batch * seqlen)
    return out.view((batch, seqlen) + tuple(hidden_states.shape[1:]))
