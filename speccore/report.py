"""The report: one self-contained HTML file (inline SVG, no scripts, no external URLs) comparing runs.

Sections: the runs side by side, throughput, cost, acceptance by draft position and by prompt length,
the lookahead k chosen (distribution and over time), drafter overhead, and the oracle/counterfactual
lookahead (speccore.hindsight). Every number comes from the named queries (speccore/queries) over the
given runs only; `summary_markdown` is the same side-by-side table for a Prefect artifact.
"""
from __future__ import annotations

import string
from datetime import datetime, timezone
from html import escape
from pathlib import Path

from . import hindsight, plot
from .analytics import connect, list_runs, records

SIDE_BY_SIDE = [  # (key, heading)
    ("label", "run"), ("run_id", "run id"), ("target", "target"), ("drafter", "drafter"),
    ("algorithm", "algorithm"), ("lookahead_policy", "lookahead"), ("device", "device"), ("rows", "rows"),
    ("errors", "errors"), ("output_tokens", "output tokens"), ("tok_per_s", "output tok/s"),
    ("mean_acceptance_length", "mean acceptance length"), ("acceptance_rate", "acceptance rate"),
    ("draft_share", "draft share"), ("cost_per_1m_output_tokens", "$ per 1M output tokens"),
    ("policy_speedup", "policy speedup"), ("oracle_speedup", "oracle speedup"),
    ("fraction_of_oracle", "fraction of oracle"),
]


def collect(data_dir: str | Path, run_ids: list[str]) -> dict:
    """Everything the report shows, for `run_ids` (in that order); ValueError names missing runs."""
    known = set(list_runs(data_dir))
    missing = [r for r in run_ids if r not in known]
    if missing:
        raise ValueError(f"no committed rows for run(s) {', '.join(missing)} under {data_dir}; "
                         f"runs there: {', '.join(sorted(known)) or 'none'}")
    con = connect(data_dir, run_ids)
    try:
        q = {name: records(con, name) for name in (
            "throughput", "cost", "drafter_overhead", "acceptance", "acceptance_by_position",
            "k_distribution", "k_over_time")}
        summaries = {r: records(con, "run_summary", {"run_id": r}) for r in run_ids}
        hs = {h.run_id: h for h in hindsight.from_store(con)}
    finally:
        con.close()
    by_run = lambda name: {r["run_id"]: r for r in q[name]}  # noqa: E731
    tp, cost, over = by_run("throughput"), by_run("cost"), by_run("drafter_overhead")
    runs = []
    for i, rid in enumerate(run_ids):
        s = summaries[rid][0] if summaries[rid] else {}
        h = hs.get(rid)
        letter = string.ascii_uppercase[i % 26] + ("" if i < 26 else str(i // 26))
        runs.append({
            **s, "run_id": rid, "letter": letter, "label": f"{letter} {s.get('lookahead_policy', '?')}",
            "rows": sum(x["rows"] for x in summaries[rid]), "errors": sum(x["errors"] for x in summaries[rid]),
            "rows_per_s": tp.get(rid, {}).get("rows_per_s"), "wall_s": tp.get(rid, {}).get("wall_s"),
            "draft_share": over.get(rid, {}).get("draft_share"),
            "verify_share": over.get(rid, {}).get("verify_share"),
            "other_share": over.get(rid, {}).get("other_share"),
            "price_per_hour": cost.get(rid, {}).get("price_per_hour"),
            "cost_usd": cost.get(rid, {}).get("cost_usd"),
            "cost_per_1m_output_tokens": cost.get(rid, {}).get("cost_per_1m_output_tokens"),
            "policy_speedup": round(h.policy_speedup, 3) if h else None,
            "oracle_speedup": round(h.oracle_speedup, 3) if h else None,
            "fraction_of_oracle": round(h.fraction_of_oracle, 3) if h else None,
        })
    return {"data_dir": str(data_dir), "runs": runs, "hindsight": hs, **q}


def summary_markdown(data: dict) -> str:
    """The runs side by side as a Markdown table (the Prefect artifact)."""
    cols = [(k, h) for k, h in SIDE_BY_SIDE if k != "label"]
    out = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_cell(r.get(k)) for k, _ in cols) + " |" for r in data["runs"]]
    out.append("")
    out.append("Output tok/s and cost charge each batch its longest row; cost = device-hours x "
               "hardware price_per_hour. Speedups are modelled over plain decoding from the run's own "
               "step timings (speccore.hindsight); fraction of oracle = policy speedup / oracle speedup.")
    return "\n".join(out)


def _cell(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return plot.fmt(v) if abs(v) >= 0.001 or v == 0 else f"{v:.6f}".rstrip("0")
    return str(v)


def _table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for _, h in cols)
    body = "".join("<tr>" + "".join(f"<td>{escape(_cell(r.get(k)))}</td>" for k, _ in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _per_run(rows: list[dict], runs: list[dict]) -> dict[str, list[dict]]:
    out = {r["run_id"]: [] for r in runs}
    for row in rows:
        out.setdefault(row["run_id"], []).append(row)
    return out


def _plots(data: dict) -> list[tuple[str, str, str]]:
    """(heading, svg, caption) per plot."""
    runs = data["runs"]
    labels = [r["label"] for r in runs]
    out = [
        ("Throughput", plot.bars("throughput", "Output tokens per second", labels,
                                 {"output tok/s": [r.get("tok_per_s") for r in runs]}, "tok/s"),
         "Output tokens / device time; a batch's time is its longest row."),
        ("Cost", plot.bars("cost", "Cost per 1M output tokens", labels,
                           {"$ / 1M output tokens": [r.get("cost_per_1m_output_tokens") for r in runs]}, "USD"),
         "Device-hours x price_per_hour / output tokens x 1e6 (model loading not counted)."),
    ]
    pos = _per_run(data["acceptance_by_position"], runs)
    out.append(("Acceptance by draft position", plot.lines(
        "acceptance_by_position", "Acceptance rate at draft position p",
        {r["label"]: [(x["position"], x["acceptance_rate"]) for x in pos[r["run_id"]]] for r in runs},
        "draft position p", "accepted / drafted at p"),
        "Share of the drafts reaching position p whose p-th token the target kept."))
    kd = _per_run(data["k_distribution"], runs)
    ks = sorted({x["k"] for x in data["k_distribution"]})
    out.append(("Lookahead k distribution", plot.bars(
        "k_distribution", "Share of steps at each lookahead k", [str(k) for k in ks],
        {r["label"]: [next((x["share"] for x in kd[r["run_id"]] if x["k"] == k), 0.0) for k in ks] for r in runs},
        "share of steps", "k (0 = plain step)"), "k proposed by the policy at each step."))
    kt = _per_run(data["k_over_time"], runs)
    out.append(("Lookahead k over time", plot.lines(
        "k_over_time", "Mean k by step index of a row",
        {r["label"]: [(x["step"], x["mean_k"]) for x in kt[r["run_id"]]] for r in runs}, "step of a row", "mean k"),
        "Later steps rest on fewer rows (rows finish)."))
    out.append(("Drafter overhead", plot.stacked(
        "overhead", "Share of device time", labels,
        {part: [r.get(f"{part}_share") or 0.0 for r in runs] for part in ("draft", "verify", "other")}, "share"),
        "draft = drafter, verify = target forwards (prefill included), other = sampling, detokenising, bookkeeping."))
    hs = data["hindsight"]
    with_h = [r for r in runs if r["run_id"] in hs]
    out.append(("Oracle and counterfactual lookahead", plot.lines(
        "oracle", "Modelled speedup over plain decoding",
        {r["label"]: sorted(hs[r["run_id"]].constant_k.items()) for r in with_h}, "constant k", "speedup",
        hlines={r["label"]: hs[r["run_id"]].oracle_speedup for r in with_h},
        points={r["label"]: (hs[r["run_id"]].mean_k, hs[r["run_id"]].policy_speedup) for r in with_h}),
        "Line: a constant k on the same steps. Dashed: the hindsight oracle. Ring: the run's policy, at its "
        "mean k."))
    return out


CSS = """body{font-family:sans-serif;margin:24px;color:#222;max-width:1240px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}table{border-collapse:collapse;font-size:12px;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}.grid{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0;border:1px solid #e3e3e3;padding:6px;width:562px}figcaption{font-size:12px;color:#555}
.note{font-size:12px;color:#555;max-width:1100px}"""


def render_html(data: dict) -> str:
    runs, hs = data["runs"], data["hindsight"]
    figs = "".join(f'<figure><h2>{escape(h)}</h2>{svg}<figcaption>{escape(c)}</figcaption></figure>'
                   for h, svg, c in _plots(data))
    oracle_rows = [{"label": r["label"], "steps": h.steps, "mean_k": round(h.mean_k, 2),
                    "mean_oracle_k": round(h.mean_oracle_k, 2), "policy_speedup": round(h.policy_speedup, 3),
                    "oracle_speedup": round(h.oracle_speedup, 3), "fraction_of_oracle": round(h.fraction_of_oracle, 3),
                    "best_constant_k": max(h.constant_k, key=h.constant_k.get),
                    "censored_share": round(h.censored_share, 3), "c": round(h.c, 3),
                    "v": ", ".join(f"{k}:{v:.2f}" for k, v in h.v.items() if k)}
                   for r in runs if (h := hs.get(r["run_id"]))]
    labels = {r["run_id"]: r["label"] for r in runs}
    acc = [{**a, "label": labels.get(a["run_id"], a["run_id"])} for a in data["acceptance"]]
    cost = [{**c, "label": labels.get(c["run_id"], c["run_id"])} for c in data["cost"]]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>speccore report: {escape(', '.join(r['run_id'] for r in runs))}</title>
<style>{CSS}</style></head><body>
<h1>speccore report</h1>
<p class="note">{len(runs)} run(s) from {escape(data['data_dir'])}, made {now}. Words as in DESIGN.md: a step
is one target forward that verifies a draft; mean acceptance length = 1 + accepted / steps; acceptance
rate = accepted / drafted.</p>
<h2>Runs side by side</h2>
{_table(runs, SIDE_BY_SIDE)}
<h2>Cost</h2>
{_table(cost, [("label", "run"), ("device", "device"), ("price_per_hour", "$ per device-hour"), ("rows", "rows"),
               ("output_tokens", "output tokens"), ("device_s", "device-s"), ("cost_usd", "cost $"),
               ("cost_per_1m_output_tokens", "$ per 1M output tokens")])}
<h2>Acceptance by prompt length</h2>
{_table(acc, [("label", "run"), ("prompt_bucket", "prompt tokens"), ("rows", "rows"), ("steps", "steps"),
              ("drafted", "drafted"), ("accepted", "accepted"), ("mean_acceptance_length", "mean acceptance length"),
              ("acceptance_rate", "acceptance rate")])}
<div class="grid">{figs}</div>
<h2>Oracle and counterfactual lookahead</h2>
{_table(oracle_rows, [("label", "run"), ("steps", "steps"), ("mean_k", "policy mean k"),
                      ("mean_oracle_k", "hindsight-best mean k"), ("policy_speedup", "policy speedup"),
                      ("oracle_speedup", "oracle speedup"), ("fraction_of_oracle", "fraction of oracle"),
                      ("best_constant_k", "best constant k"), ("censored_share", "fully accepted steps"),
                      ("c", "draft cost c"), ("v", "verify cost v(k)")])}
<p class="note">Speedups are modelled over plain decoding: a step yields accepted + 1 tokens and costs
k&middot;c + v(k) plain target steps, with c and v(k) learnt from this run's own step timings (its batched
forwards). The oracle drafts exactly what was accepted at each step (or decodes plainly when cheaper).
A constant k keeps the logged step boundaries and yields min(accepted, k) + 1 tokens. On fully accepted
steps a longer draft might have kept more, so the oracle and large constant k are lower bounds there and
the fraction of oracle an upper bound.</p>
</body></html>
"""


def write_report(data_dir: str | Path, run_ids: list[str], out: str | Path) -> Path:
    """Write the report for `run_ids` to `out` (atomically: a reader never sees half a file)."""
    import os

    html = render_html(collect(data_dir, run_ids))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, out)
    return out
