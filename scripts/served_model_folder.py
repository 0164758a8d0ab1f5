"""Write a random-weights model folder of a shipped shape that ``transformers serve`` can load offline.

For GPU runs of the server scenario on a machine with no model hub: the architecture and sizes come from
llem-mlflow's shipped config (``llem_mlflow/models/<name>.json``, e.g. ``gpt2`` or
``TinyLlama/TinyLlama-1.1B-Chat-v1.0``), the weights are seeded random (bf16 on CUDA, fp32 on CPU), and the
tokenizer is the offline byte-level BPE of ``tests/serving_model.py`` padded with plain added tokens
(``<t12345>``) up to the model's vocabulary, so every id the model can emit decodes to text and the
server's stream never stalls on an unknown id. The same folder serves the in-process run beside it
(``--model FOLDER --weights pretrained``), so both ways run identical weights.

    python scripts/served_model_folder.py gpt2 /tmp/models/gpt2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write(shape: str, folder: Path, seed: int = 0) -> Path:
    """Write ``folder`` (config, safetensors weights, tokenizer with chat template); return it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from llem_mlflow.backends.catalogue import shipped_config
    from tests.serving_model import CHAT_TEMPLATE, EOS_TOKEN, _train_tokenizer

    config_dict = shipped_config(shape)
    if config_dict is None:
        raise SystemExit(f"no shipped config named {shape!r}")
    config_dict = {k: v for k, v in config_dict.items() if k != "_name_or_path"}
    config = AutoConfig.for_model(**config_dict)
    vocab = int(config.vocab_size)
    folder.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(1000),
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
    )
    fast.add_tokens([f"<t{i}>" for i in range(len(fast), vocab)])
    fast.save_pretrained(str(folder))
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    tok_config["chat_template"] = CHAT_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, key, 0)  # the tokenizer's one special token
    cuda = torch.cuda.is_available()
    torch.manual_seed(seed)
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    model.generation_config.bos_token_id = model.generation_config.eos_token_id = 0
    model.generation_config.pad_token_id = 0
    model.save_pretrained(str(folder))
    print(
        f"{folder}: {shape} shape, vocab {vocab} (tokenizer {len(fast)}), "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters"
    )
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shape", help="a shipped config name, e.g. gpt2")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write(args.shape, args.folder, args.seed)


if __name__ == "__main__":
    main()
