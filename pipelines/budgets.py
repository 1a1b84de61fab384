"""Per-task generation budgets: enough new tokens for each task's references.

One global ``--max-new-tokens`` either cuts long answers (a summary needs ~60 tokens) or wastes
time on short ones; and a cut answer is scored wrong because it was cut, not because it was wrong.
``--max-new-tokens auto`` gives every task the token length of its longest reference (as the
run's tokenizer counts it), scaled by ``factor``, plus ``margin`` tokens for the words a chat model
puts around an answer ("To add 753 and 224, we ..."), within [``floor``, ``ceiling``]. The budgets, their
rule and each task's longest reference are recorded in the manifest (``scoring.generation``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# measured on the demo model: SmolLM2-135M-Instruct answers "What is 753 plus 224?" in 35-40 tokens
# ("To add 753 and 224, we need to ... = 977.") for a 3-token reference, so the margin is 64
BUDGET_RULE = dict(factor=2.0, margin=64, floor=16, ceiling=192)


def task_budgets(tokenizer, tasks: Sequence[str], references: Sequence, *, factor: float = BUDGET_RULE["factor"],
                 margin: int = BUDGET_RULE["margin"], floor: int = BUDGET_RULE["floor"],
                 ceiling: int = BUDGET_RULE["ceiling"]) -> dict[str, dict]:
    """{task: {"max_new_tokens", "reference_tokens" (the longest), "references"}} over the given rows
    (every split: a reference's length is known before generation and leaks no answer)."""
    longest: dict[str, int] = {}
    count: dict[str, int] = {}
    texts = ["" if r is None or (isinstance(r, float) and r != r) else str(r) for r in references]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    for task, n in zip(tasks, lengths):
        task = str(task)
        longest[task] = max(longest.get(task, 0), int(n))
        count[task] = count.get(task, 0) + 1
    return {t: {"max_new_tokens": int(min(ceiling, max(floor, math.ceil(factor * n) + margin))),
                "reference_tokens": n, "references": count[t]} for t, n in sorted(longest.items())}


def row_budgets(tasks: Sequence[str], budgets: dict[str, dict], default: int) -> np.ndarray:
    """[N] max new tokens per row (``default`` for a task without a budget)."""
    return np.array([budgets.get(str(t), {}).get("max_new_tokens", default) for t in tasks], dtype=np.int64)
