"""Exact short-context prompt encoding for open_clip `CLIP` models, and the token table that trains
only the rows the prompts read. Prompts are padded to 77 tokens but end after about 10; the text
transformer is causal and all else acts per position, so the first L = 1 + the largest pooled
position positions give the same pooled features (`can_trim` says when this holds)."""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from torch import nn
from open_clip.transformer import text_global_pool

_TRIM_POOLS = ("argmax", "eos", "first")
# model -> (mask identity, is causal): checked once per mask tensor (another tensor, or the model
# moved, is checked again), not once per call: reading a GPU mask back costs a device sync.
_causal_cache: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def trim_tokens(tokens: torch.Tensor, pool_type: str = "argmax", eos_id: int | None = None) -> torch.Tensor:
    """tokens[:, :L], the smallest L that pools the same positions (argmax: at the EOT token, the
    highest id): the pads after the last EOT dropped. On a GPU this is a sync: trim fixed prompts once
    on the CPU."""
    if pool_type == "first":
        return tokens[:, :1]
    if pool_type == "argmax":
        last = tokens.argmax(dim=-1)
    elif pool_type == "eos":
        if eos_id is None:
            raise ValueError("eos pooling needs eos_id")
        last = (tokens == eos_id).int().argmax(dim=-1)  # as open_clip's text_global_pool
    else:
        raise ValueError(f"pool_type {pool_type!r} cannot be trimmed")
    return tokens[:, :int(last.max()) + 1] if tokens.shape[0] else tokens


def _mask_is_causal(model: torch.nn.Module) -> bool:
    mask = model.attn_mask
    key = (mask.data_ptr(), mask.device, tuple(mask.shape))
    cached = _causal_cache.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    above = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu_(1)
    blocked = mask if mask.dtype == torch.bool else torch.isneginf(mask)
    causal = bool(blocked[above].all())
    _causal_cache[model] = (key, causal)
    return causal


def can_trim(model: torch.nn.Module) -> bool:
    """Whether `encode_text_trimmed` runs the short context: the class's own `CLIP.encode_text`,
    pooling 'argmax', 'eos' (with `text_eos_id`) or 'first', and a causal 2-D `attn_mask`."""
    return (getattr(type(model), "encode_text", None) is CLIP.encode_text
            and getattr(model, "text_pool_type", None) in _TRIM_POOLS
            and (model.text_pool_type != "eos" or getattr(model, "text_eos_id", None) is not None)
            and getattr(model, "attn_mask", None) is not None
            and model.attn_mask.ndim == 2
            and _mask_is_causal(model))


def encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Same output (and gradients) as `model.encode_text(tokens, normalize=normalize)`, faster.
    `tokens`: from the tokenizer, or already cut by `trim_tokens` (no device sync on a GPU)."""
    n_pos = getattr(model, "positional_embedding", None)
    if (not can_trim(model) or tokens.ndim != 2 or n_pos is None or tokens.shape[1] > n_pos.shape[0]):
        return model.encode_text(tokens, normalize=normalize)
    pool_type, eos_id = model.text_pool_type, getattr(model, "text_eos_id", None)
    if tokens.device.type == "cpu" or tokens.shape[1] == n_pos.shape[0]:
        tokens = trim_tokens(tokens, pool_type, eos_id)
    length = tokens.shape[1]

    # open_clip 3.3.0 CLIP.encode_text, with the context cut to `length`
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, pool_type, eos_token_id=eos_id)
    if model.text_projection is not None:
        if isinstance(model.text_projection, torch.nn.Linear):
            x = model.text_projection(x)
        else:
            x = x @ model.text_projection
    return F.normalize(x, dim=-1) if normalize else x


class UsedRowsEmbedding(nn.Module):
    """open_clip's token embedding with only the rows fixed prompts read trainable (iWildCam's 368 of
    49,408; the table is 25 M of ViT-B/32's 151 M parameters): `rows`, a copy of them, trains and the
    table is frozen, so the same predictions without a table-sized gradient and Adam update every
    step (unused rows never move; weight decay no longer shrinks them). The state dict is open_clip's:
    `weight` is the table with `rows` written in, and loading one refills both."""

    def __init__(self, embedding: nn.Embedding, tokens: torch.Tensor):
        super().__init__()
        self.weight = embedding.weight
        ids = torch.unique(tokens.to(self.weight.device))
        self.rows = nn.Parameter(self.weight.detach()[ids].clone(), requires_grad=self.weight.requires_grad)
        self.weight.requires_grad_(False)
        local = torch.full((self.weight.shape[0],), -1, dtype=torch.long, device=ids.device)
        local[ids] = torch.arange(len(ids), device=ids.device)
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("local", local, persistent=False)  # token id -> its row in `rows`, or -1
        self.register_state_dict_post_hook(open_clip_state)
        self.register_load_state_dict_pre_hook(rows_from_weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        local = self.local[tokens]  # a lookup, not a check: no device sync
        used = F.embedding(local.clamp(min=0), self.rows)
        return torch.where((local >= 0).unsqueeze(-1), used, F.embedding(tokens, self.weight))


def open_clip_state(module: UsedRowsEmbedding, state_dict, prefix, local_metadata) -> None:
    """State-dict post hook: open_clip's `weight`, the frozen table with the trained rows written in."""
    state_dict[prefix + "weight"] = module.weight.detach().index_put((module.ids,), module.rows.detach())
    del state_dict[prefix + "rows"]


def rows_from_weight(module: UsedRowsEmbedding, state_dict, prefix, *args) -> None:
    """Load pre hook: an open_clip `weight` refills `rows` too (a copy: torch's load_state_dict made it)."""
    if (weight := state_dict.get(prefix + "weight")) is not None:
        state_dict[prefix + "rows"] = weight[module.ids.to(weight.device)]


def train_used_rows(model: nn.Module, tokens: torch.Tensor) -> None:
    """Give `model` (an open_clip CLIP) a `UsedRowsEmbedding` for the token ids in `tokens`, in place;
    a model whose token embedding is not a plain `nn.Embedding` keeps it."""
    emb = getattr(model, "token_embedding", None)
    if type(emb) is nn.Embedding and emb.padding_idx is None and emb.max_norm is None and not emb.sparse:
        model.token_embedding = UsedRowsEmbedding(emb, tokens)
