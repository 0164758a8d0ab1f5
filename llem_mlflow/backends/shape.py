"""What a model is, from its config or its modules: the facts (vocabulary, context) and the FLOPs shape.

Owns ``config_facts`` (vocabulary size and context length from a config alone), ``config_shape`` (the
``ModelShape`` the FLOPs estimate needs, from a config alone: for a backend whose model lives in another
process, e.g. a vLLM engine, and for the transformers backend itself when it knows the architecture
family) and ``model_shape`` (the same by walking a loaded torch model's parameters: exact for any
architecture).

``config_shape`` knows two families: GPT-2 (fused ``c_attn``, a two-matrix MLP of width ``n_inner`` or
``4 * hidden``) and the Llama family (``llama``, ``mistral``, ``qwen2``, ``qwen3``: separate Q/K/V/O with
grouped-query K/V heads, a gated three-matrix MLP of width ``intermediate_size``); for any other it returns
None and the caller walks the modules. The LM head counts ``vocab * hidden`` whether or not it is tied to the
input embeddings (the matmul is done either way). Biases and norms are 1-D and never counted, as in the walk.
"""

from __future__ import annotations

from typing import Any

from llem_mlflow.backends.catalogue import context_length
from llem_mlflow.errors import BackendError
from llem_mlflow.protocols import ModelFacts, ModelShape

#: model_type values whose layers are GPT-2's: fused QKV (hidden x 3 hidden), out (hidden x hidden),
#: a two-matrix MLP (hidden x n_inner, n_inner x hidden).
_GPT2_FAMILY = frozenset({"gpt2"})
#: model_type values whose layers are Llama's: Q/O (hidden x heads*head_dim), K/V (hidden x
#: kv_heads*head_dim), a gated MLP (gate, up, down: hidden x intermediate_size each).
_LLAMA_FAMILY = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def text_config(config: Any) -> Any:
    """The text part of a (possibly multimodal) transformers config."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def config_facts(config: Any, source: str) -> ModelFacts:
    """Vocabulary size and context length of a transformers config (its text part for multimodal ones)."""
    text = text_config(config)
    values = text.to_dict()
    vocab = values.get("vocab_size")
    if not isinstance(vocab, int) or vocab <= 0:
        raise BackendError(f"the model config ({source}) has no vocab_size; use a causal LM config")
    return ModelFacts(vocab_size=vocab, context_length=context_length(values), config_source=source)


def _attention_widths(text: Any) -> tuple[int, int, int]:
    """(query heads, key/value heads, head size) of a text config."""
    n_heads = int(text.num_attention_heads)
    head_dim = getattr(text, "head_dim", None) or int(text.hidden_size) // n_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or n_heads
    return n_heads, int(kv_heads), int(head_dim)


def _layer_matmul_params(text: Any) -> int | None:
    """2-D weights of one decoder layer, or None for an architecture family this module does not know."""
    hidden = int(text.hidden_size)
    model_type = getattr(text, "model_type", None)
    if model_type in _GPT2_FAMILY and not getattr(text, "add_cross_attention", False):
        inner = getattr(text, "n_inner", None) or 4 * hidden
        return 4 * hidden * hidden + 2 * hidden * int(inner)
    if model_type in _LLAMA_FAMILY:
        n_heads, kv_heads, head_dim = _attention_widths(text)
        attention = hidden * head_dim * (2 * n_heads + 2 * kv_heads)  # Q, O and the grouped K, V
        return attention + 3 * hidden * int(text.intermediate_size)  # gate, up, down
    return None


def config_shape(config: Any) -> ModelShape | None:
    """The ``ModelShape`` of a transformers config alone (no weights, no modules); None: family unknown.

    Equal to ``model_shape`` of a model built from the same config, for the families listed in the module
    docstring (tested on every shipped config and a tiny config of each family).
    """
    text = text_config(config)
    per_layer = _layer_matmul_params(text)
    if per_layer is None:
        return None
    n_heads, kv_heads, head_dim = _attention_widths(text)
    n_layers = int(text.num_hidden_layers)
    vocab = int(text.vocab_size)
    return ModelShape(
        body_matmul_params=n_layers * per_layer,
        lm_head_params=vocab * int(text.hidden_size),
        n_layers=n_layers,
        attn_dim=n_heads * head_dim,
        vocab_size=vocab,
        kv_dim=kv_heads * head_dim,
    )


def model_shape(model: Any) -> ModelShape:
    """FLOPs-relevant sizes: 2-D weights outside embeddings and the LM head, head size, widths."""
    import torch

    head = model.get_output_embeddings()
    head_weight = head.weight if head is not None else None
    excluded = {id(head_weight)} if head_weight is not None else set()
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            excluded.add(id(module.weight))
    body = sum(p.numel() for p in model.parameters() if p.dim() == 2 and id(p) not in excluded)
    config = text_config(model.config)
    n_heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return ModelShape(
        body_matmul_params=int(body),
        lm_head_params=int(head_weight.numel()) if head_weight is not None else 0,
        n_layers=int(config.num_hidden_layers),
        attn_dim=int(n_heads * head_dim),
        vocab_size=int(config.vocab_size),
        kv_dim=int((getattr(config, "num_key_value_heads", None) or n_heads) * head_dim),
    )
