"""The recipe branch's encoder: a small Hugging Face BERT (docs/model.md).

The paper's encoder has 2 layers, 2 heads and hidden size 768, mBERT's configuration otherwise
(intermediate 3072, GELU, dropout 0.1). Only its embedding tables (word, position, token type and
their LayerNorm) are initialised from a pretrained model (``--text_init``, default
``bert-base-multilingual-cased``); the layers and the pooler (dense + tanh on [CLS]) start random.

Attention runs through PyTorch's ``scaled_dot_product_attention`` ("sdpa"), which is faster than
transformers' "eager" implementation and numerically the same; "eager" is switched on only for a
forward that asks for attention maps, because sdpa cannot return them.

Columns that are padding in every row of a batch are cut before the encoder runs (attention
masks them anyway, and position embeddings depend only on the position), so a batch padded to 512
costs what its longest recipe costs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig, BertModel

log = logging.getLogger(__name__)

# the embedding tables copied by --text_init, as suffixes of state-dict keys
EMBEDDING_TABLES = (
    "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight",
    "embeddings.LayerNorm.bias",
)


def bert_config(*, vocab_size: int, hidden: int, layers: int, heads: int, intermediate: int,
                max_len: int, pad_id: int) -> BertConfig:
    """mBERT's configuration with the given sizes (GELU, dropout 0.1, 2 token types)."""
    if hidden % heads:
        raise ValueError(f"BERT hidden size {hidden} is not a multiple of the number of heads {heads}")
    return BertConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate, hidden_act="gelu", hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1, max_position_embeddings=max(512, max_len), type_vocab_size=2,
        layer_norm_eps=1e-12, initializer_range=0.02, pad_token_id=pad_id, attn_implementation="sdpa",
    )


class TextEncoder(nn.Module):
    """BERT over token ids; returns the pooled [CLS] vector.

    Args:
        vocab_size, hidden, layers, heads, intermediate, max_len, pad_id: see ``ArchConfig``.
    """

    def __init__(self, *, vocab_size: int, hidden: int, layers: int, heads: int, intermediate: int,
                 max_len: int, pad_id: int = 0):
        super().__init__()
        self.bert = BertModel(bert_config(vocab_size=vocab_size, hidden=hidden, layers=layers, heads=heads,
                                          intermediate=intermediate, max_len=max_len, pad_id=pad_id))
        self.pad_id = pad_id

    @property
    def word_embeddings(self) -> nn.Embedding:
        """The word embedding table (in the word-embedding optimiser group with the rest of BERT's embeddings)."""
        return self.bert.embeddings.word_embeddings

    @contextlib.contextmanager
    def _eager_attention(self) -> Iterator[None]:
        """Switch to transformers' eager attention (which returns attention maps) for one forward."""
        previous = self.bert.config._attn_implementation
        self.bert.set_attn_implementation("eager")
        try:
            yield
        finally:
            self.bert.set_attn_implementation(previous)

    def forward(self, tokens: torch.Tensor, output_attentions: bool = False):
        """Encode token ids.

        Args:
            tokens: ``(B, T)`` integer ids; the attention mask is ``tokens != pad_id`` (id > 0 with
                the project's tokenizer, whose [PAD] is 0).
            output_attentions: also return the attention maps.

        Returns:
            ``(B, hidden)`` pooled vectors, or ``(pooled, attentions)`` where ``attentions`` is a
            tuple with one ``(B, heads, T', T')`` tensor per layer, ``T'`` being ``T`` less the
            columns that are padding in every row.
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (B, T), got shape {tuple(tokens.shape)}")
        max_pos = self.bert.config.max_position_embeddings
        mask = tokens != self.pad_id  # (B, T)
        used = mask.any(dim=0).nonzero()
        keep = int(used.max()) + 1 if used.numel() else 1
        tokens, mask = tokens[:, :keep], mask[:, :keep]  # (B, T')
        if tokens.shape[1] > max_pos:
            raise ValueError(f"token rows of length {tokens.shape[1]} exceed the encoder's {max_pos} positions")
        ctx = self._eager_attention() if output_attentions else contextlib.nullcontext()
        with ctx:
            out = self.bert(input_ids=tokens, attention_mask=mask.long(), output_attentions=output_attentions)
        pooled = out.pooler_output  # (B, H)
        if output_attentions:
            return pooled, tuple(out.attentions)
        return pooled


def _load_source_state(spec: str) -> dict[str, torch.Tensor]:
    """The state dict of the pretrained model named by ``--text_init`` (a local folder or a hub name)."""
    from transformers import AutoModel

    local = Path(spec).expanduser()
    looks_local = local.is_absolute() or spec.startswith((".", "~"))  # a hub name is "org/name"
    if not local.exists() and looks_local:
        raise RuntimeError(f"--text_init {spec}: no such folder; pass `--text_init none` or a local model folder")
    try:
        model = AutoModel.from_pretrained(str(local) if local.exists() else spec)
    except Exception as exc:  # offline hub, bad folder, unknown name...
        raise RuntimeError(
            f"could not load --text_init {spec!r} ({type(exc).__name__}: {exc}). Pass `--text_init none` "
            "(random embeddings) or the path of a local folder written by save_pretrained."
        ) from exc
    return model.state_dict()


def init_embeddings(encoder: TextEncoder, spec: str) -> dict[str, list[str]]:
    """Copy the embedding tables of a pretrained model into ``encoder`` where shapes match.

    Args:
        encoder: the encoder to initialise.
        spec: ``--text_init``: ``"none"`` (do nothing), a hub name or a local folder.

    Returns:
        ``{"copied": [...], "skipped": [...]}`` with table names (skipped ones with the reason).
    """
    report: dict[str, list[str]] = {"copied": [], "skipped": []}
    if str(spec).lower() == "none":
        return report
    source = _load_source_state(str(spec))
    target = encoder.bert.state_dict()
    with torch.no_grad():
        for table in EMBEDDING_TABLES:
            found = [k for k in source if k == table or k.endswith("." + table)]
            if not found:
                report["skipped"].append(f"{table} (absent from {spec})")
                continue
            src = source[found[0]]
            dst = target[table]
            if src.shape != dst.shape:
                report["skipped"].append(f"{table} (shape {tuple(src.shape)} != {tuple(dst.shape)})")
                continue
            dst.copy_(src)  # state_dict tensors share storage with the parameters
            report["copied"].append(table)
    log.info("text embeddings from %s: copied %s; skipped %s", spec,
             report["copied"] or "nothing", report["skipped"] or "nothing")
    return report
