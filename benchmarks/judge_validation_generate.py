"""Generate the unlabelled responses of the judge validation set (``resources/judge_validation``).

Why a separate script: the labels in ``labels.jsonl`` were written by a person reading these
responses, so the responses must be reproducible on their own, without any judge in the loop.
The sampling mirrors the default pipeline (embedded SmolLM2-135M-Instruct, bf16 on CPU,
temperature 0.7, top_p 0.9, 48 new tokens) but spreads the questions: every 6th role gets its
first 2 system prompts x 2 questions each (4 distinct questions per role drawn from all 240), and
the default role's 5 neutral prompts get 8 questions each. Each default response is paired with a
randomly drawn role whose rubric it is labelled and judged against, as if that role had been asked
for: it checks that judges give a plain Assistant reply 0/1 rather than 3.

Run: ``.venv/bin/python benchmarks/judge_validation_generate.py --out /tmp/unlabelled.jsonl``
(about 11 minutes on a busy 2-core machine). Labels are added by hand afterwards.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from assistant_axis.conversation import build_conversation, substitute_model_name
from assistant_axis.generation import SamplingSettings, generate_batch
from assistant_axis.models import load_model
from assistant_axis.pipeline.layout import sample_key
from assistant_axis.roles import DEFAULT_ROLE, load_questions, load_roles

ROOT = Path(__file__).resolve().parents[1]
MODEL = "embedded:smollm2-135m-instruct"
MODEL_NAME = "SmolLM"  # substituted for {model_name} in the default prompts
ROLE_STRIDE = 6
PROMPTS_PER_ROLE = 2
QUESTIONS_PER_PROMPT = 2
DEFAULT_QUESTIONS_PER_PROMPT = 8
SEED = 20260101


def build_samples(roles_dir: Path, questions_file: Path, seed: int = SEED) -> list[dict[str, object]]:
    """The (role, system prompt, question, rubric role) rows to generate, in a fixed order."""
    roles = load_roles(roles_dir)
    questions = load_questions(questions_file)
    rng = random.Random(seed)
    named = [r for r in roles if r != DEFAULT_ROLE]
    chosen = named[::ROLE_STRIDE]
    samples: list[dict[str, object]] = []
    for name in chosen:
        picks = rng.sample(questions, PROMPTS_PER_ROLE * QUESTIONS_PER_PROMPT)
        for p_idx in range(PROMPTS_PER_ROLE):
            for q in picks[p_idx * QUESTIONS_PER_PROMPT : (p_idx + 1) * QUESTIONS_PER_PROMPT]:
                samples.append(
                    {
                        "key": sample_key(name, p_idx, q.id),
                        "role": name,
                        "system_prompt": roles[name].prompts[p_idx],
                        "question": q.text,
                        "judge_prompt_role": name,
                    }
                )
    default = roles[DEFAULT_ROLE]
    for p_idx, prompt in enumerate(default.prompts):
        for q in rng.sample(questions, DEFAULT_QUESTIONS_PER_PROMPT):
            samples.append(
                {
                    "key": sample_key(DEFAULT_ROLE, p_idx, q.id),
                    "role": DEFAULT_ROLE,
                    "system_prompt": substitute_model_name(prompt, MODEL_NAME),
                    "question": q.text,
                    "judge_prompt_role": rng.choice(named),
                }
            )
    return samples


def main() -> None:
    """Generate every sample in one seeded ``generate_batch`` call and write JSONL without labels."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    samples = build_samples(ROOT / "resources/roles", ROOT / "resources/extraction_questions.jsonl")
    model, tokenizer = load_model(MODEL, dtype="bfloat16", device="cpu")
    convs = [build_conversation(str(s["system_prompt"]), str(s["question"])) for s in samples]
    settings = SamplingSettings(temperature=0.7, top_p=0.9, max_new_tokens=48, seed=SEED)
    out = generate_batch(model, tokenizer, convs, settings, batch_size=32, progress=True)
    with args.out.open("w", encoding="utf-8") as fh:
        for s, g in zip(samples, out, strict=True):
            fh.write(json.dumps({**s, "response": g.text}, ensure_ascii=False) + "\n")
    print(f"wrote {len(samples)} responses to {args.out}")


if __name__ == "__main__":
    main()
