"""Held-out perplexity (``backends.perplexity``) and ``TransformersBackend.quality()``: tiny models on CPU."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from llem_mlflow.backends import perplexity as ppl  # noqa: E402
from llem_mlflow.backends.hf import TransformersBackend  # noqa: E402
from llem_mlflow.backends.perplexity import PerplexityFigure, heldout_sha256, heldout_text  # noqa: E402
from llem_mlflow.errors import BackendError, ConfigError  # noqa: E402
from tests.helpers_models import make_local_model  # noqa: E402

#: sha256 of llem_mlflow/models/heldout.txt: a change to the text changes every perplexity figure.
HELDOUT_SHA256 = "2c20ec6b7e17343bf79886aeaf241b0d3b6c2a8a5264bf1262ee11d29d793fb8"
RANDOM_NOTE = (
    "random weights: the perplexity of an untrained model says nothing about quality "
    "(it is near the vocabulary size)"
)


def utf8_ids(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def random_gpt2(vocab: int = 512, positions: int = 128, seed: int = 0) -> Any:
    """A tiny GPT-2 with seeded random weights (dropout 0.1 by default: only eval mode repeats it)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config)


class NextId(torch.nn.Module):
    """Always right when the text's ids count up by one: a huge logit at ``(id + 1) % vocab``."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids: Any, **_: Any) -> SimpleNamespace:
        logits = torch.nn.functional.one_hot((input_ids + 1) % self.vocab, self.vocab).float() * 100.0
        return SimpleNamespace(logits=logits)


class Bigram(torch.nn.Module):
    """Logits depend on the current id only (a fixed random table), so the windowed figure is exact;
    it records each forward pass's input length."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.table = torch.randn(vocab, vocab, generator=generator, dtype=torch.float64) * 3.0
        self.lengths: list[int] = []

    def forward(self, input_ids: Any, **_: Any) -> SimpleNamespace:
        self.lengths.append(int(input_ids.shape[1]))
        return SimpleNamespace(logits=self.table[input_ids])

    def exact(self, ids: list[int]) -> float:
        """Perplexity over every token after the first, each given its predecessor."""
        logp = torch.log_softmax(self.table[torch.tensor(ids[:-1])], dim=-1)
        nll = -logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
        return math.exp(float(nll.mean()))


def test_heldout_text_is_shipped_ascii_prose_with_a_pinned_hash() -> None:
    path = Path(ppl.__file__).resolve().parents[1] / ppl.HELDOUT_FILE
    raw = path.read_bytes()
    assert raw.isascii() and 2000 <= len(raw) <= 4000
    assert heldout_text() == raw.decode("ascii")
    assert hashlib.sha256(raw).hexdigest() == heldout_sha256() == HELDOUT_SHA256


@pytest.mark.parametrize(("n_ids", "window"), [(2, 2), (10, 2), (10, 3), (100, 16), (101, 16), (7, 16)])
def test_spans_score_every_token_after_the_first_once_with_half_a_window_of_context(
    n_ids: int, window: int
) -> None:
    spans = ppl.spans(n_ids, window)
    scored = [i for _, end, first in spans for i in range(first, end)]
    assert scored == list(range(1, n_ids))
    for begin, end, first in spans:
        assert 0 <= begin < first < end <= n_ids and end - begin <= window
        assert begin == 0 or first - begin >= window // 2  # context before the first scored token


def test_a_random_model_is_near_the_vocabulary_size() -> None:
    vocab = 512
    figure = ppl.perplexity(
        random_gpt2(vocab), utf8_ids, heldout_text(), max_tokens=2048, window=128, device="cpu"
    )
    assert vocab / 2 < figure.perplexity < vocab * 2, figure
    assert (figure.tokens, figure.window, figure.text_sha256) == (2047, 128, HELDOUT_SHA256)
    assert figure.seconds > 0


def test_a_model_that_always_predicts_the_next_token_has_perplexity_one() -> None:
    vocab = 50
    count_up = lambda text: [i % vocab for i in range(len(text))]  # noqa: E731
    figure = ppl.perplexity(NextId(vocab), count_up, "x" * 300, max_tokens=2048, window=32, device="cpu")
    assert figure.perplexity == pytest.approx(1.0, abs=1e-9)
    assert figure.tokens == 299
    count_up_by_two = lambda text: [2 * i % vocab for i in range(len(text))]  # noqa: E731
    wrong = ppl.perplexity(
        NextId(vocab), count_up_by_two, "x" * 300, max_tokens=2048, window=32, device="cpu"
    )
    assert wrong.perplexity > 1e30  # every prediction misses by a logit of 100


@pytest.mark.parametrize(("length", "window"), [(40, 1024), (40, 40), (300, 16), (301, 7), (300, 2)])
def test_the_sliding_window_counts_each_token_after_the_first_exactly_once(length: int, window: int) -> None:
    text = heldout_text()[:length]
    model = Bigram(128)
    figure = ppl.perplexity(model, utf8_ids, text, max_tokens=2048, window=window, device="cpu")
    assert figure.tokens == length - 1
    assert figure.perplexity == pytest.approx(model.exact(utf8_ids(text)), rel=1e-5)  # float32 logits
    assert max(model.lengths) == min(window, length)


def test_max_tokens_cuts_the_text() -> None:
    model = Bigram(128)
    figure = ppl.perplexity(model, utf8_ids, heldout_text(), max_tokens=50, window=16, device="cpu")
    assert figure.tokens == 49
    assert figure.perplexity == pytest.approx(model.exact(utf8_ids(heldout_text())[:50]), rel=1e-5)
    assert figure.text_sha256 == HELDOUT_SHA256  # the text it was cut from


def test_the_figure_is_deterministic_in_eval_mode_and_the_mode_is_restored() -> None:
    model = random_gpt2()
    model.train()  # dropout on: without eval() the two figures would differ
    first = ppl.perplexity(model, utf8_ids, heldout_text(), max_tokens=600, window=128, device="cpu")
    again = ppl.perplexity(model, utf8_ids, heldout_text(), max_tokens=600, window=128, device="cpu")
    assert first.perplexity == again.perplexity and first.tokens == again.tokens == 599
    assert model.training


def test_bad_arguments_and_too_short_a_text() -> None:
    model = Bigram(128)
    with pytest.raises(ConfigError, match="window >= 2"):
        ppl.perplexity(model, utf8_ids, "some text", max_tokens=2048, window=1, device="cpu")
    with pytest.raises(BackendError, match="1 token"):
        ppl.perplexity(model, utf8_ids, "a", max_tokens=2048, window=16, device="cpu")


def test_window_is_the_context_length_at_most_1024() -> None:
    assert [ppl.window_for(n) for n in (256, 1024, 4096, None)] == [256, 1024, 1024, 1024]


# -- TransformersBackend.quality() and quality_note()


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No hub, and an empty HF cache: the byte fallback tokenizer for a shipped name, as offline."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))


def test_backend_quality_with_random_weights_and_the_byte_fallback() -> None:
    backend = TransformersBackend("llem/tiny-gpt2", weights="random", device="cpu")
    assert backend.quality() is None  # before load()
    backend.load()
    figure = backend.quality()
    assert isinstance(figure, PerplexityFigure)
    # the first 2048 UTF-8 bytes of the text (the byte fallback), a window of n_positions
    assert (figure.tokens, figure.window, figure.text_sha256) == (2047, 256, HELDOUT_SHA256)
    vocab = backend.inspect().vocab_size
    assert vocab / 2 < figure.perplexity < vocab * 2, figure
    direct = ppl.perplexity(
        backend.model, utf8_ids, heldout_text(), max_tokens=2048, window=256, device="cpu"
    )
    assert figure.perplexity == direct.perplexity
    assert backend.quality_note() == RANDOM_NOTE


def test_backend_quality_uses_the_models_own_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = make_local_model(tmp_path / "tiny", "llem/tiny-gpt2", with_weights=True)
    backend = TransformersBackend(str(folder), weights="pretrained", device="cpu")
    backend.load()
    figure = backend.quality()
    assert figure is not None
    encode = AutoTokenizer.from_pretrained(str(folder)).encode
    direct = ppl.perplexity(backend.model, encode, heldout_text(), max_tokens=2048, window=256, device="cpu")
    by_bytes = ppl.perplexity(
        backend.model, utf8_ids, heldout_text(), max_tokens=2048, window=256, device="cpu"
    )
    assert (figure.perplexity, figure.tokens) == (direct.perplexity, direct.tokens)
    assert figure.perplexity != by_bytes.perplexity
    assert backend.quality_note() is None and backend.quality_note("pretrained") is None


def test_quality_note_follows_the_weights_load_used() -> None:
    auto = TransformersBackend("llem/tiny-gpt2", weights="auto", device="cpu")
    assert auto.quality_note() is None  # what load() used is unknown here
    assert auto.quality_note("random") == RANDOM_NOTE  # LoadedModel.weights after the auto fallback
    assert auto.quality_note("pretrained") is None
