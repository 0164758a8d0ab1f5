"""Test helper: build a tiny local model folder (config.json, tokenizer files, optional weights), or the
same inside an HF hub cache layout (``models--org--name/snapshots/<commit>/``, ``refs/main``).

Everything is made offline: the config comes from the shipped catalogue, the tokenizer is a
character-level ``tokenizers`` WordLevel model (one token per character, so token counts
equal string lengths), saved as a ``PreTrainedTokenizerFast`` so ``AutoTokenizer`` loads it.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

from llem_mlflow.backends.catalogue import shipped_config

#: Special tokens of the helper tokenizer, at ids 0..3 (match the tiny configs: pad 0, bos 1, eos 2).
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


def char_vocab() -> dict[str, int]:
    """Special tokens, then every printable ASCII character: fewer than 1000 ids."""
    tokens = SPECIAL_TOKENS + [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]
    return {tok: i for i, tok in enumerate(tokens)}


def save_char_tokenizer(folder: Path) -> None:
    """Write a character-level fast tokenizer (no BOS added) into ``folder``."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=char_vocab(), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    fast.save_pretrained(str(folder))


def save_random_weights(folder: Path, seed: int = 0) -> None:
    """Build the folder's architecture with random weights and save them (safetensors)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)))
    model.save_pretrained(str(folder))


def make_local_model(
    dir: Path,
    arch: str = "llem/tiny-gpt2",
    with_tokenizer: bool = True,
    with_weights: bool = False,
    config_overrides: dict[str, Any] | None = None,
) -> Path:
    """Create ``dir`` holding ``config.json`` of shipped ``arch`` (+ tokenizer, + weights); return it."""
    config = shipped_config(arch)
    if config is None:
        raise ValueError(f"{arch!r} is not a shipped model config")
    config.update(config_overrides or {})
    dir.mkdir(parents=True, exist_ok=True)
    (dir / "config.json").write_text(json.dumps(config, indent=2))
    if with_tokenizer:
        save_char_tokenizer(dir)
    if with_weights:
        save_random_weights(dir)
    return dir


#: The commit a cached test model is stored under (any 40 hex digits).
CACHED_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_cached_model(
    cache: Path,
    repo_id: str,
    arch: str = "llem/tiny-gpt2",
    with_tokenizer: bool = True,
    with_weights: bool = False,
    commit: str = CACHED_COMMIT,
) -> Path:
    """Put a tiny model into an HF hub cache folder as a download would (``refs/main`` -> ``commit``).

    Point huggingface_hub at it with ``monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", ...)``.
    Returns the snapshot folder.
    """
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = make_local_model(repo / "snapshots" / commit, arch, with_tokenizer, with_weights)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
