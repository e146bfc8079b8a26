"""A rollout-shaped query trace, made from the demo's labelled queries (synthetic: generated here).

GRPO samples a group of `n` rollouts per prompt; they run in lockstep (one generation step for
the whole batch), so each turn's searches of a group arrive together:
- turn 1: every rollout of the group opens with the same search (the prompt's question, verbatim);
- turn 2: each rollout rephrases it, picking one of `PARAPHRASES` templates (so rollouts of a group
  often coincide with each other);
- turn 3: each rollout asks something new (another article's question: no repeat within the group).
Then an evaluation pass re-runs the first `eval_share` of the prompts' opening searches, as
validation re-runs the same prompts every evaluation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from app.demo import labelled_queries

PARAPHRASES = ("what is {q}", "{q} wikipedia", "tell me about the {q}")


@dataclass
class Trace:
    queries: list[str]
    groups: int
    rollouts_per_group: int
    eval_share: float

    def describe(self) -> dict[str, object]:
        distinct = len(set(self.queries))
        return {
            "requests": len(self.queries),
            "distinct_queries": distinct,
            "repeated_share": round(1 - distinct / len(self.queries), 3),
            "groups": self.groups,
            "rollouts_per_group": self.rollouts_per_group,
            "turns": 3,
            "paraphrase_templates": len(PARAPHRASES),
            "eval_share": self.eval_share,
            "note": "synthetic trace generated from the demo's labelled queries (bench/rollout_trace.py)",
        }


def rollout_trace(groups: int = 60, rollouts_per_group: int = 8, eval_share: float = 0.25, seed: int = 7) -> Trace:
    questions = [query for query, _ in labelled_queries()]
    rng = random.Random(seed)
    prompts = rng.sample(questions, groups)
    others = [q for q in questions if q not in set(prompts)]
    trace: list[str] = []
    for prompt in prompts:
        trace += [prompt] * rollouts_per_group
        trace += [rng.choice(PARAPHRASES).format(q=prompt) for _ in range(rollouts_per_group)]
        trace += rng.sample(others, rollouts_per_group)
    trace += prompts[: int(groups * eval_share)]
    return Trace(trace, groups, rollouts_per_group, eval_share)


if __name__ == "__main__":
    import json

    print(json.dumps(rollout_trace().describe(), indent=2))
