"""Quality and joules in one MLflow evaluation: ``mlflow.genai.evaluate`` with llem-mlflow's energy scorer.

    python examples/genai_energy_eval.py

A tiny GPT-2 with random weights (built from a config: nothing is downloaded; on the GPU when there is
one) answers four questions.
Each answer is generated inside ``@mlflow.trace`` and ``llem_mlflow.track()``, which puts the GPU
energy of the generation on the trace's span (``llem.energy_j``, ``llem.duration_s``, ...).
``evaluate_with_energy`` runs ``mlflow.genai.evaluate`` one prediction at a time (whole-GPU energy
counters cannot split predictions that run together) with two scorers: ``energy`` (joules per answer,
read from the trace) and ``exact_match`` (against the expected answer). Random weights answer nonsense,
so exact_match is False: the point is quality and energy side by side, per row.

On a machine without an NVIDIA GPU energy is null and its rationale says why; everything else runs the
same (under a minute on a CPU). The store is ``MLFLOW_TRACKING_URI`` (default: ./mlruns.db, sqlite).
"""

from __future__ import annotations

import os
from typing import Any

import mlflow
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import llem_mlflow
from llem_mlflow.tracking.traces import energy_scorer, evaluate_with_energy

EXPERIMENT = "llem-mlflow-genai-energy"
QUESTIONS = [
    ("What is the capital of France?", "Paris"),
    ("How many legs does a spider have?", "8"),
    ("What colour is the sky on a clear day?", "blue"),
    ("What is 2 + 2?", "4"),
]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# On a GPU an answer must outlast several ~100 ms updates of the energy counter to be resolved: 256 new
# tokens of this tiny model took 0.19-0.28 s on an H100 (2-3 updates: coarse; set LLEM_EVAL_NEW_TOKENS
# up to 450 (the context is 512) for finer figures); on a CPU 12 keep the example under a minute.
NEW_TOKENS = int(os.environ.get("LLEM_EVAL_NEW_TOKENS") or (256 if DEVICE == "cuda" else 12))


def tiny_model() -> GPT2LMHeadModel:
    """A 2-layer GPT-2 with random weights over 256 token ids (a prompt's ids are its UTF-8 bytes), on the GPU
    when there is one."""
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=256, n_positions=512, n_embd=64, n_layer=2, n_head=2,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    return GPT2LMHeadModel(config).eval().to(DEVICE)


def make_predict_fn(model: GPT2LMHeadModel) -> Any:
    """``predict_fn(question) -> answer``: generation traced by MLflow and measured by ``track()``."""

    @mlflow.trace(name="answer", span_type="LLM")
    def predict_fn(question: str) -> str:
        ids = torch.tensor([list(question.encode("utf-8"))], device=DEVICE)
        # log_to_mlflow=False: the energy goes on this trace's span (read by the scorer); without it each
        # prediction would also log track/<name>/... metrics into a run of its own.
        with llem_mlflow.track("generate", log_to_mlflow=False), torch.no_grad():
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=True, top_k=40
            )
        return "".join(chr(32 + int(t) % 95) for t in out[0, ids.shape[1] :])  # new ids as printable text

    return predict_fn


@mlflow.genai.scorers.scorer
def exact_match(outputs: str, expectations: dict[str, Any]) -> bool:
    """The answer is exactly the expected one (after trimming spaces)."""
    return outputs.strip() == str(expectations["expected_response"]).strip()


def rationale(assessments: list[dict[str, Any]], name: str) -> str | None:
    """Scorer ``name``'s rationale among a result row's assessments (MLflow 3.13 has no column for it)."""
    return next((a.get("rationale") for a in assessments if a.get("assessment_name") == name), None)


def main() -> None:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlruns.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(EXPERIMENT)
    data = [{"inputs": {"question": q}, "expectations": {"expected_response": a}} for q, a in QUESTIONS]
    predict_fn = make_predict_fn(tiny_model())
    with mlflow.start_run(run_name="genai-energy-eval") as run:
        result = evaluate_with_energy(data, predict_fn, scorers=[energy_scorer(), exact_match])
    table = result.result_df
    for _, row in table.iterrows():
        joules = row["energy/value"]
        shown = f"{joules:.4g} J" if isinstance(joules, float) and joules == joules else "null"
        why = rationale(row["assessments"], "energy")
        print(f"energy {shown} ({why}); exact_match {row['exact_match/value']}")
    print(f"metrics: {result.metrics}")
    print(
        f"\nSee it in the MLflow UI: mlflow ui --backend-store-uri {uri}\n"
        f"  experiment {EXPERIMENT!r} -> Evaluations -> run 'genai-energy-eval' ({run.info.run_id}):\n"
        "  the rows with the 'energy' and 'exact_match' columns; a row's trace shows llem.* on its span."
    )


if __name__ == "__main__":
    main()
