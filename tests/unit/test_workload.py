"""Workload: seeded synthetic prompts, JSON-lines prompts and batching."""

from __future__ import annotations

from pathlib import Path

import pytest

from llem_mlflow.errors import ConfigError
from llem_mlflow.measure.workload import PromptFile, batches, read_jsonl_prompts, synthetic_prompts


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
    assert read_jsonl_prompts(path, 2) == PromptFile(prompts=["a b", "c"], metadata_lines=0)


def test_jsonl_reads_the_prompt_field_and_skips_metadata_lines(tmp_path: Path) -> None:
    path = tmp_path / "energy_score.jsonl"
    path.write_text(
        '{"_provenance": {"source": "AI Energy Score"}, "_license": "apache-2.0"}\n'
        '{"text": "first", "id": 1}\n'
        '{"_note": "mid-file metadata"}\n'
        '{"text": "second", "id": 2}\n'
        '{"_after": "not reached"}\n'
    )
    read = read_jsonl_prompts(path, 2, field="text")
    assert (read.prompts, read.metadata_lines) == (["first", "second"], 2)


def test_a_line_without_the_field_names_file_line_field_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"_provenance": "x"}\n{"prompt": "ok"}\n{"text": "x", "id": 3}\n')
    with pytest.raises(ConfigError) as caught:
        read_jsonl_prompts(path, 2)
    message = str(caught.value)
    assert f"{path}:3" in message and "'prompt'" in message and "prompt_field" in message
    assert '"text", "id"' in message and "\n" not in message


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("not json\n", r"dataset: .*p.jsonl:1 is not valid JSON"),
        ('["x"]\n', r"dataset: .*p.jsonl:1 must be a JSON object .*prompt_field 'prompt', not list"),
        ('{"prompt": 3}\n', r"p.jsonl:1: 'prompt' \(prompt_field\) must be a non-empty string, not int"),
        ('{"prompt": ""}\n', r"must be a non-empty string, not an empty string"),
        ("{}\n", r"p.jsonl:1 has no key 'prompt' \(prompt_field\); its keys are none"),
        ('{"prompt": "x"}\n', r"holds 1 prompts under prompt_field 'prompt' but n=2"),
        ('{"_meta": 1}\n{"prompt": "x"}\n', r"holds 1 prompts under prompt_field 'prompt' but n=2"),
    ],
)
def test_jsonl_errors_are_one_line_and_say_where(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as caught:
        read_jsonl_prompts(path, 2)
    assert "\n" not in str(caught.value) and str(caught.value).startswith("dataset: ")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^dataset: file not found: .*none.jsonl"):
        read_jsonl_prompts(tmp_path / "none.jsonl", 1)
