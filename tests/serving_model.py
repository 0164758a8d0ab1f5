"""Test helper: a tiny random-weights GPT-2 model folder that a real ``transformers serve`` can serve on CPU.

Made offline and deterministically (seeded): a byte-level BPE tokenizer trained with the ``tokenizers``
library on generated text (pseudo-words from seeded syllables; its alphabet is the printable ASCII
characters, not all 256 bytes, so every token decodes to whole text: a lone-byte token would stream
nothing; other characters in a prompt are dropped), saved as a ``PreTrainedTokenizerFast``
with one special token ``<|endoftext|>`` (id 0: bos, eos, unk and pad, as GPT-2) and a chat template in
``tokenizer_config.json``; then a 2-layer GPT-2 config sized to that vocabulary, random weights saved
with ``save_pretrained`` (safetensors). ``SERVE_TEMPLATE`` is the command line that serves such a
folder (see tests/integration/test_transformers_serve.py for how the server behaves).
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Any

#: The command line serving a local model folder on CPU (transformers 5.25). The folder is the served
#: model id; without ``--device cpu`` it picks CUDA when torch sees one.
SERVE_TEMPLATE = "transformers serve {model} --host {host} --port {port} --device cpu"

#: Environment keeping the server offline: either OFFLINE variable alone stops its look-ups of
#: huggingface.co (seen with strace: the CLI and the model's process each resolve it otherwise); no update
#: check either (it touches ``$HF_HOME/.check_for_update_done`` and looks up the latest release daily).
SERVE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
}

#: The one special token (GPT-2's): bos, eos, unk and pad, id 0.
EOS_TOKEN = "<|endoftext|>"
EOS_ID = 0
VOCAB_SIZE = 1000
SEED = 0

#: A minimal chat template: each message as ``<role>: text`` on its line, then the assistant's turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "bra", "cle", "dro", "fi", "gu", "ho"]


def training_lines(n_lines: int = 400, seed: int = SEED) -> list[str]:
    """Generated text: seeded sentences of pseudo-words, a little punctuation and digits."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(_SYLLABLES, k=rng.randint(1, 4))) for _ in range(600)]
    lines = []
    for i in range(n_lines):
        sentence = " ".join(rng.choices(words, k=rng.randint(5, 16)))
        lines.append(f"{sentence.capitalize()}{rng.choice('.,!?')} {i}")
    return [*lines, string.printable]  # every printable ASCII character is in the alphabet


def _train_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``training_lines()`` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        show_progress=False,
    )
    tok.train_from_iterator(training_lines(), trainer=trainer)
    return tok


def save_tokenizer(folder: Path, vocab_size: int = VOCAB_SIZE) -> int:
    """Write tokenizer.json and tokenizer_config.json (chat template included); return the vocab size."""
    from transformers import PreTrainedTokenizerFast

    tok = _train_tokenizer(vocab_size)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
    )
    fast.save_pretrained(str(folder))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2))
    (folder / "chat_template.jinja").unlink(missing_ok=True)  # one template, in tokenizer_config.json
    return len(fast)


def write_tiny_model(folder: Path, seed: int = SEED) -> Path:
    """Create ``folder`` holding a tiny random GPT-2 (2 layers, 64 wide, 256 positions) and its tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab = save_tokenizer(folder)
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=256,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=EOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
    )
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(str(folder))
    return folder
