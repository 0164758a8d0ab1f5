"""Workload: seeded synthetic prompts, JSON-lines prompts and batching."""

from __future__ import annotations

from pathlib import Path

import pytest

from llem_mlflow.errors import ConfigError
from llem_mlflow.workload import batches, read_jsonl_prompts, synthetic_prompts


def test_synthetic_prompts_are_seeded_and_exact() -> None:
    a = synthetic_prompts(vocab_size=100, n=3, length=7, seed=1)
    assert a == synthetic_prompts(vocab_size=100, n=3, length=7, seed=1)
    assert a != synthetic_prompts(vocab_size=100, n=3, length=7, seed=2)
    assert [len(p) for p in a] == [7, 7, 7]
    assert all(0 <= t < 100 for p in a for t in p)


def test_batches_keep_order_and_remainder() -> None:
    assert batches([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]


def test_jsonl_reads_first_n(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a b"}\n\n{"prompt": "c"}\n{"prompt": "d"}\n')
    assert read_jsonl_prompts(path, 2) == ["a b", "c"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("not json\n", r"p.jsonl:1 is not valid JSON"),
        ('{"text": "x"}\n', r"p.jsonl:1 must be an object"),
        ('{"prompt": "x"}\n', r"holds 1 prompts but n=2"),
    ],
)
def test_jsonl_errors_say_where(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        read_jsonl_prompts(path, 2)
