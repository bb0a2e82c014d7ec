"""Reading pool files: the `ampo` layout and the published multi-response layouts and TRL preference
pairs, detected from the first row; every row validated into a `PoolRecord`."""

from __future__ import annotations

from pathlib import Path

from .checks import (_check_embeddings, _check_floats, _check_meta, _check_number, _check_prompt, _check_responses,
                     _field, short)
from .records import PoolError, PoolRecord
from .rows import read_rows


def detect_layout(row: dict) -> str:
    """Name the column mapping a row follows (see `read_pool`)."""
    if "responses" in row:
        return "ampo"
    if "all_generated_responses" in row:
        return "multi_response"
    if "completions" in row:
        return "ultrafeedback"
    if "A0" in row:
        return "numbered"
    if "chosen" in row and "rejected" in row:
        return "trl_pairs"
    if "prompt" in row:
        return "prompts"
    return "unknown"


def _parse_row(path: Path, i: int, row: dict, layout: str) -> PoolRecord:
    """One raw row in `layout` → a validated PoolRecord."""
    rid = row.get("id", row.get("prompt_id"))
    if layout == "ampo":
        prompt = _check_prompt(path, i, row.get("prompt"))
        responses = _check_responses(path, i, row.get("responses"), "responses")
        rewards = row.get("rewards")
        rewards = None if rewards is None else _check_floats(path, i, rewards, "rewards", len(responses))
    elif layout == "multi_response":
        prompt = _check_prompt(path, i, row.get("prompt"))
        responses = _check_responses(path, i, _field(path, i, row, "all_generated_responses", layout),
                                     "all_generated_responses")
        scores = row.get("all_reward_scores")
        rewards = None if scores is None else _check_floats(path, i, scores, "all_reward_scores", len(responses))
    elif layout == "ultrafeedback":
        prompt = _check_prompt(path, i, row.get("prompt", row.get("instruction")))
        comps = _field(path, i, row, "completions", layout)
        if not isinstance(comps, list) or not comps:
            raise PoolError(path, i, "completions", "must be a non-empty list")
        for j, c in enumerate(comps):
            if not isinstance(c, dict) or "response" not in c:
                raise PoolError(path, i, f"completions[{j}]", "needs a 'response'")
        responses = _check_responses(path, i, [c["response"] for c in comps], "completions.response")
        scores = [c.get("overall_score") for c in comps]
        rewards = None if all(s is None for s in scores) else _check_floats(
            path, i, scores, "completions.overall_score", len(responses))
    elif layout == "numbered":
        prompt = _check_prompt(path, i, row.get("prompt"))
        responses, rewards = _numbered_columns(path, i, row)
    elif layout == "trl_pairs":
        prompt = _check_prompt(path, i, row.get("prompt"))
        responses = [_check_responses(path, i, [_field(path, i, row, name, layout)], name)[0]
                     for name in ("chosen", "rejected")]
        if "score_chosen" in row and "score_rejected" in row:
            rewards = _check_floats(path, i, [row["score_chosen"], row["score_rejected"]],
                                    "score_chosen/score_rejected", 2)
        else:
            rewards = [1.0, 0.0]  # chosen preferred: a hard label
    else:
        raise PoolError(path, i, None, "no 'responses' (or all_generated_responses, completions, "
                        "chosen/rejected) field: not a pool file")
    rec = PoolRecord(prompt=prompt, responses=responses, rewards=rewards,
                     id=str(rid) if rid is not None else f"row{i}")
    if row.get("embeddings") is not None:
        rec.embeddings = _check_embeddings(path, i, row["embeddings"], len(responses))
    for name, kind in (("finished", bool), ("n_tokens", int), ("selected", int)):
        if row.get(name) is not None:
            vals = row[name]
            if not isinstance(vals, list) or not all(isinstance(v, kind) and (kind is bool or not isinstance(v, bool))
                                                     for v in vals):
                raise PoolError(path, i, name, f"must be a list of {kind.__name__}")
            setattr(rec, name, list(vals))
    for name in ("finished", "n_tokens"):  # one entry per response, as the rewards
        vals = getattr(rec, name)
        if vals is not None and len(vals) != len(responses):
            raise PoolError(path, i, name, f"has {len(vals)} entries but there are {len(responses)} responses")
    for j, n in enumerate(rec.n_tokens or []):
        if not 0 <= n < 2**63:
            raise PoolError(path, i, f"n_tokens[{j}]", f"must be a token count (>= 0), got {short(n)}")
    if rec.selected is not None and any(not 0 <= s < len(responses) for s in rec.selected):
        raise PoolError(path, i, "selected", "index out of range")
    if row.get("meta") is not None:
        rec.meta = _check_meta(path, i, row["meta"])
    known = {"id", "prompt_id", "prompt", "responses", "rewards", "embeddings", "finished",
             "n_tokens", "selected", "meta", "all_generated_responses", "all_reward_scores", "completions",
             "instruction", "chosen", "rejected", "score_chosen", "score_rejected"}
    rec.extra = {k: v for k, v in row.items() if k not in known and layout == "ampo"}
    return rec


def _numbered_columns(path: Path, i: int, row: dict) -> tuple[list[str], list[float] | None]:
    """Responses `A0, A1, ...` and their rewards `score_A0, score_A1, ...` (the AMPO authors'
    published layout). A missing or null `Aj` (sets whose rows differ in size) is no response."""
    names = [f"A{j}" for j in range(len(row)) if row.get(f"A{j}") is not None]
    if not names:
        raise PoolError(path, i, "A0", "no responses (every A0, A1, ... is missing or null)")
    responses = _check_responses(path, i, [row[n] for n in names], "A0..An")
    scores = [row.get(f"score_{n}") for n in names]
    if all(s is None for s in scores):
        return responses, None
    missing = next((n for n, s in zip(names, scores) if s is None), None)
    if missing:
        raise PoolError(path, i, f"score_{missing}", "missing while other responses have scores")
    return responses, [_check_number(path, i, s, f"score_{n}") for n, s in zip(names, scores)]


RESPONSE_FIELDS = {"ampo": "responses", "multi_response": "all_generated_responses", "ultrafeedback": "completions",
                   "numbered": "A0..An", "trl_pairs": "chosen/rejected"}  # where each layout keeps its responses


def read_pool(path: str | Path, require: tuple[str, ...] = (), min_responses: int = 1,
              why: str = "run the stage that produces it first") -> tuple[list[PoolRecord], str]:
    """Read and validate a pool file; return (records, layout name).

    Layouts: `ampo` (prompt/responses/rewards/embeddings), `multi_response`
    (all_generated_responses/all_reward_scores), `ultrafeedback` (completions with
    overall_score), `numbered` (A0..An/score_A0..score_An), `trl_pairs` (prompt/chosen/rejected;
    rewards 1/0 unless scores are given). `path` may also be a `save_to_disk` folder.
    `require` names fields every record must have (e.g. "rewards", "embeddings"; `why` says what
    to do about a missing one), `min_responses` how many responses each needs.
    """
    path = Path(path)
    records: list[PoolRecord] = []
    layout = None
    width = None  # (embedding width, row that set it)
    for i, row in read_rows(path):
        layout = layout or detect_layout(row)
        rec = _parse_row(path, i, row, layout)
        for name in require:
            if getattr(rec, name) is None:
                raise PoolError(path, i, name, f"missing ({why})")
        if len(rec.responses) < min_responses:
            raise PoolError(path, i, RESPONSE_FIELDS[layout], f"{len(rec.responses)} usable response(s); "
                            f"a training group needs at least {min_responses}")
        if rec.embeddings is not None:
            width = width or (rec.embeddings.shape[1], i)
            if rec.embeddings.shape[1] != width[0]:
                raise PoolError(path, i, "embeddings", f"width {rec.embeddings.shape[1]} differs from row "
                                f"{width[1]}'s {width[0]}")
        records.append(rec)
    if not records:
        raise PoolError(path, None, None, "no rows")
    return records, layout or "ampo"
