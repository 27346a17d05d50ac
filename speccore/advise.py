"""The drafter advisor: which (drafter, algorithm, lookahead policy) was cheapest, and on what evidence.

Ranks configurations by cost per 1M output tokens over every past run under a data dir, per dataset,
target and prompt-length bucket (queries/advise.sql holds the cost rule). Each ranking states the runs,
rows and output tokens behind each entry and flags what is too thin to act on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# An entry rests on thin evidence below these: one run can be a fluke of a busy machine, and a handful
# of rows a fluke of the prompts. Trades: flags honestly on small sweeps, at the price of nagging.
MIN_RUNS = 2
MIN_ROWS = 20


@dataclass(frozen=True)
class Ranking:
    dataset: str
    target: str
    prompt_bucket: str
    entries: list[dict]  # advise.sql rows, cheapest first

    def warnings(self) -> list[str]:
        """What the ranking cannot tell, in words."""
        out = []
        if len(self.entries) < 2:
            out.append("only one configuration was run here: nothing to compare it with")
        thin = [label(e) for e in self.entries if is_thin(e)]
        if thin:
            out.append(f"thin evidence (< {MIN_RUNS} runs or < {MIN_ROWS} rows): " + "; ".join(thin))
        if len(self.entries) >= 2:
            best, second = self.entries[0], self.entries[1]
            if best["max_run_cost_per_1m"] is not None and second["min_run_cost_per_1m"] is not None \
                    and best["max_run_cost_per_1m"] >= second["min_run_cost_per_1m"]:
                out.append("the two cheapest overlap run by run: no clear winner")
        if self.entries and all(e["cost_per_1m_output_tokens"] == 0 for e in self.entries):
            out.append("every price_per_hour is 0: set hardware.price_per_hour to rank by cost")
        return out


def label(e: dict) -> str:
    return f"drafter={e['drafter']} algorithm={e['algorithm']} lookahead={e['lookahead_policy']}"


def is_thin(e: dict) -> bool:
    return e["runs"] < MIN_RUNS or e["rows"] < MIN_ROWS


def rankings(data_dir: str | Path = "data", dataset: str | None = None) -> list[Ranking]:
    """One Ranking per (dataset, target, prompt bucket); `dataset` keeps a dataset label
    (e.g. humaneval, file:x.jsonl) or a kind (file). Empty when there is no data."""
    from .analytics import connect, records

    con = connect(data_dir)
    try:
        rows = records(con, "advise")
    finally:
        con.close()
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if dataset is None or r["dataset"] == dataset or r["dataset"].split(":", 1)[0] == dataset:
            groups.setdefault((r["dataset"], r["target"], r["prompt_bucket"]), []).append(r)
    return [Ranking(d, t, b, es) for (d, t, b), es in groups.items()]


def render(ranks: list[Ranking], data_dir: str | Path = "data", dataset: str | None = None) -> str:
    """The advice as text; says so plainly when there is nothing to rank."""
    if not ranks:
        where = f" for dataset {dataset!r}" if dataset else ""
        return (f"no data: no finished runs with rows and a manifest under {data_dir}{where}, so there is "
                "nothing to rank. Run some jobs first (python -m flows.generate ...), e.g. one per drafter "
                "or lookahead policy on the same dataset.")
    lines = []
    for r in ranks:
        lines.append(f"dataset {r.dataset}, target {r.target}, prompt tokens {r.prompt_bucket}:")
        best = r.entries[0]["cost_per_1m_output_tokens"]
        for e in r.entries:
            cost = e["cost_per_1m_output_tokens"]
            rel = f" ({cost / best:.2f}x the best)" if best and cost and e["rank"] > 1 else ""
            spread = (f"; per run ${e['min_run_cost_per_1m']:.4f}-${e['max_run_cost_per_1m']:.4f}"
                      if e["runs"] > 1 else "")
            price = "no cost" if cost is None else f"${cost:.4f} per 1M output tokens"
            lines.append(f"  {e['rank']}. {label(e)}: {price}{rel}")
            lines.append(f"     evidence: {e['runs']} runs, {e['rows']} rows, {e['output_tokens']} output tokens, "
                         f"{e['device_s']:.1f} device-s{spread}{' [thin]' if is_thin(e) else ''}")
        lines += [f"  ! {w}" for w in r.warnings()]
    return "\n".join(lines)
