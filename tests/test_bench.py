"""The benchmark harness end to end on the tiny fp64 zoo: every part runs, the JSON has its keys, and
every configuration's greedy output equals transformers' own greedy generate."""
from __future__ import annotations

import json

import pytest

from bench.bench import in_run_oracle, main

PROMPTS = [
    {"prompt": "def add(a, b):"},
    {"messages": [{"role": "user", "content": "The cat sat on the"}]},
    {"prompt": "for i in range(10):\n    print(i)\nfor i in range("},  # the warm-up row
]


def test_bench_end_to_end(tiny_zoo, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
    out = tmp_path / "res.json"
    pairs = ["ar", str(tiny_zoo["drafter-llama-g"]), str(tiny_zoo["drafter-llama-m"]), "prompt-lookup"]
    main(["--target", str(tiny_zoo["target-llama-g"]), "--pairs", ",".join(pairs), "--policies", "constant,cost",
          "--dataset", str(data), "--n", "2", "--max-new-tokens", "8", "--warmup-tokens", "4", "--dtype", "float64",
          "--threads", "1", "--cost-ks", "0-3", "--cost-reps", "1", "--oracle-k", "6", "--batch-sizes", "1,2",
          "--out", str(out)])
    res = json.loads(out.read_text())
    assert {"meta", "memory", "costs", "configs", "divergences", "batch", "reference", "hf_assist_settings"} <= set(res)
    assert res["reference"] == "hf:ar" and res["meta"]["n"] == 2
    names = {c["name"] for c in res["configs"]}
    assert {"sc:ar", "hf:ar", "sc:drafter-llama-g/constant", "sc:drafter-llama-m/cost", "sc:drafter-llama-g/k6",
            "hf:drafter-llama-g", "hf:drafter-llama-m", "sc:prompt-lookup/constant", "hf:prompt-lookup"} <= names
    for c in res["configs"]:
        assert c["error"] is None, c["name"]
        assert c["identical"] is True and c["identical_rows"] == c["total_rows"] == 2, c["name"]
        assert c["tok_per_s"] > 0 and c["tokens"] > 0
        for key in ("speedup_vs_own_ar", "mean_acceptance_length", "acceptance_rate", "draft_share", "ratio_vs_peer"):
            assert key in c
    assert res["divergences"] == []
    spec = {c["name"]: c for c in res["configs"]}["sc:drafter-llama-g/constant"]
    assert spec["ratio_vs_peer"] is not None and spec["rows_vs_peer"] == 2 and spec["drafted"] > 0
    assert 0 < spec["oracle"]["fraction_of_oracle"] and spec["oracle"]["oracle_speedup"] > 0
    by = {c["name"]: c for c in res["configs"]}
    fields = res["meta"]["steps_log_fields"]["speccore"]
    decoding_s = {x: sum(s[fields.index("draft_ms")] + s[fields.index("verify_ms")] for s in by[x]["steps_log"])
                  for x in ("sc:ar", spec["name"])}  # every row identical here, so every row counts
    assert spec["speedup_vs_own_ar_decoding"] == pytest.approx(decoding_s["sc:ar"] / decoding_s[spec["name"]])
    assert spec["oracle"]["fraction_of_oracle_in_run"] == pytest.approx(
        spec["speedup_vs_own_ar_decoding"] / spec["oracle"]["oracle_speedup_in_run"])
    assert by["hf:drafter-llama-g"]["speedup_vs_own_ar_decoding"] is None  # transformers' steps are not timed
    assert res["hf_assist_settings"]["hf:drafter-llama-g"]["num_assistant_tokens"] > 0
    assert "batch_size = 1" in res["hf_batch_refusal"]
    assert set(res["costs"]["target"]["v"]) == {"0", "1", "2", "3"}
    for c in res["batch"]["configs"]:
        assert set(c["by_size"]) == {"1", "2"} and all(d["identical_rows"] == 2 for d in c["by_size"].values())
    mem = res["memory"]
    assert mem["peak_rss_bytes"] > 0 and mem["param_bytes_total"] > 0 and "meets_goal" in mem
    assert out.with_suffix(".md").read_text().startswith("# speccore benchmark")


def test_the_in_run_oracle_pays_the_runs_own_costs():
    """c and v as the run's steps saw them (inrun_costs) price the oracle's log; a width the run never verified
    is interpolated between two it did, from a plain step of 1 (the AR steps' median defines it; the speculative
    rows' plain steps, timed beside them, read 0.9 here)."""
    inrun = {"t1_ms": 200.0, "v": {0: 0.9, 2: 1.4, 4: 1.8}, "c": {"d": 0.5}}
    log = [{"k": 6, "drafted": 6, "accepted": 1}, {"k": 6, "drafted": 6, "accepted": 0},
           {"k": 6, "drafted": 6, "accepted": 6}]
    # a = 1: 0.5 + v(1) = 0.5 + 1.2 < 2; a = 0: plain, 1; a = 6: 3 + v(6) = 3 + 2.2 < 7 (beyond 4 on the last slope)
    got = in_run_oracle(inrun, "d", log, measured=1.5)
    assert got["oracle_speedup_in_run"] == pytest.approx((2 + 1 + 7) / (1.7 + 1 + 5.2))
    assert got["fraction_of_oracle_in_run"] == pytest.approx(1.5 / got["oracle_speedup_in_run"])
    assert in_run_oracle(inrun, "other", log, 1.5) == {} and in_run_oracle({}, "d", log, 1.5) == {}
    assert in_run_oracle(inrun, "d", log, None)["fraction_of_oracle_in_run"] is None


def test_gpu_bench_harness_on_cpu(tmp_path):
    """bench/gpu.py's own logic (random-weight shapes shrunk by --tiny, run on the CPU): the controlled
    proposer's acceptance follows alpha, every speculative row equals the AR reference, and the report
    carries every batch size."""
    from bench.gpu import main as gpu_main

    out = tmp_path / "gpu"
    res = gpu_main(["--device", "cpu", "--tiny", "--batch-sizes", "1,3", "--ks", "0,2", "--reps", "1",
                    "--alphas", "0.0,1.0", "--max-new-tokens", "12", "--out", str(out)])
    assert [r["batch_size"] for r in res["verify"]] == [1, 3] and res["verify"][0]["v"][0] == 1.0
    assert [r["batch_size"] for r in res["engine"]] == [1, 3]
    for r in res["engine"]:
        assert r["hf_equals_speccore_ar"] == r["batch_size"]  # fp32 greedy: transformers agrees
        specs = {(s["proposer"], s["alpha"], s["policy"]): s for s in r["spec"]}
        assert len(specs) == 8
        for s in specs.values():
            assert s["identical_rows"] == r["batch_size"], s
            assert s["speccore_ar_tok_s_beside"] > 0 and s["vs_speccore_ar"] > 0  # its own AR, timed beside it
        for kind in ("drafter", "free"):
            assert specs[(kind, 1.0, "constant-4")]["acceptance_rate"] == 1.0
            assert specs[(kind, 0.0, "constant-4")]["acceptance_rate"] == 0.0
    assert json.loads((tmp_path / "gpu.json").read_text())["meta"]["tiny"] is True
    assert "| 3 |" in (tmp_path / "gpu.md").read_text()


def test_cudagraph_bench_harness_on_cpu(tmp_path):
    """bench/cudagraph.py on the CPU (tiny shapes): the StaticCache forward it captures on a GPU gives the
    DynamicCache forward's logits at every width, each path is timed, and the report says graphs were skipped."""
    from bench.cudagraph import main as cg_main

    out = tmp_path / "cg"
    res = cg_main(["--device", "cpu", "--tiny", "--batch-sizes", "1,2", "--widths", "1,3", "--reps", "1",
                   "--out", str(out)])
    assert [(r["model"], r["batch_size"], r["width"]) for r in res["rows"]] == [
        (m, b, w) for m in ("target", "drafter") for b in (1, 2) for w in (1, 3)]
    for r in res["rows"]:
        assert r["static_vs_eager"]["argmax_same"] == r["static_vs_eager"]["positions"] == r["batch_size"] * r["width"]
        assert r["static_vs_eager"]["max_abs_diff"] < 1e-4
        assert {"eager_ms", "engine_ms", "static_ms"} <= set(r) and "graph_ms" not in r
        assert r["path"].startswith("none: CUDA graphs are CUDA-only")
    assert [s["batch_size"] for s in res["summary"]] == [1, 2] and res["summary"][0]["eager_v"][1] == 1.0
    assert "CUDA-only" in (tmp_path / "cg.md").read_text()


def test_signals_tabulates_the_next_tokens_agreement_by_what_came_before(tmp_path, capsys):
    from bench.replay import main as replay_main

    row = {"match": [1, 0, 1, 1], "top": [0.3, 0.99, 0.6, 0.9], "target_top": [0.99, 0.4, 0.97, 0.85]}
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"dataset": "toy", "rows": [row]}))
    replay_main(["signals", str(trace)])
    got = {ln.split(" | ")[1]: ln.split(" | ")[2:] for ln in capsys.readouterr().out.splitlines()[2:]}
    # t = 1, 2, 3 follow target_top 0.99, 0.4, 0.97 and drafter top 0.3, 0.99, 0.6; their matches are 0, 1, 1
    assert got["target_top[t-1]"] == ["1.00 (1)", "–", "–", "1.00 (1)", "0.00 (1) |"]
    assert got["drafter top[t-1]"] == ["0.00 (1)", "1.00 (1)", "–", "–", "1.00 (1) |"]
    assert got["target_top[t] (hindsight)"] == ["0.00 (1)", "–", "1.00 (1)", "1.00 (1)", "– |"]


def test_replay_steps_a_trace_as_the_engine_does(tmp_path, capsys):
    from bench.replay import FixedCosts, at_live_positions, main as replay_main, run_row
    from speccore.lookahead import ConfidenceStop, Constant

    cm = FixedCosts(0.2, {0: 1.0, 1: 1.1, 4: 1.4, 8: 1.7, 16: 2.4})
    assert cm.v(2) == pytest.approx(1.2) and cm.v(20) == pytest.approx(2.75) and cm.c == 0.2
    # token 0 comes from the prompt's forward; from 1, k=2: tokens 1-2 drafted, 1 kept (+1 bonus); from 3: 2 kept
    # (+1); at 6 a budget of 8 leaves room for 1, and the output (it ended on EOS) has 1 token left to draft
    row = {"target": [7] * 7, "match": [1, 1, 0, 1, 1, 1, 1], "top": [0.9] * 7}
    got = run_row(row, Constant(2), cm, 8)
    assert [(s["k"], s["drafted"], s["accepted"]) for s in got] == [(2, 2, 1), (2, 2, 2), (1, 1, 1)]
    # a budget of 7, as long as the output: at 6 no room is left, a plain step
    got = run_row(row, Constant(2), cm, 7)
    assert [(s["k"], s["drafted"], s["accepted"]) for s in got] == [(2, 2, 1), (2, 2, 2), (0, 0, 0)]
    # the engine drafted 2 from 1 and kept 1 (as traced), then drafted 1 from 3 where the trace would draft 2
    assert at_live_positions(row, [(2, 2, 1), (2, 1, 1), (1, 1, 1)]) == [
        (1, (2, 1), (2, 1)), (3, (1, 1), (2, 2)), (5, (1, 1), (1, 1))]
    sure = {"target": [7] * 7, "match": [1] * 7, "top": [0.9, 0.9, 0.3, 0.9, 0.9, 0.9, 0.9]}
    # stops after the unsure token 2 (kept); then k is capped by the room a budget of 7 leaves (2)
    got = run_row(sure, ConfidenceStop(k_max=4, threshold=0.5), cm, 7)
    assert [(s["k"], s["drafted"], s["accepted"]) for s in got] == [(4, 2, 2), (2, 2, 2)]
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"dataset": "toy", "rows": [row, sure]}))
    costs = _toy_costs(tmp_path)
    replay_main(["replay", str(trace), "--costs", str(costs), "--drafter-cost", "d",
                 "--policies", "constant:k=2;cost:stop=confidence;cost", "--k-max", "4"])
    out = capsys.readouterr().out
    lines = {ln.split(" | ")[0].strip("| "): ln for ln in out.splitlines() if ln.startswith("| ")}
    assert {"oracle", "constant:k=2", "cost:stop=confidence", "cost"} <= set(lines)
    assert "(100%)" not in lines["constant:k=2"]  # a rejected token drafted: short of hindsight


def test_a_cross_vocab_trace_replays_as_the_engine_steps_its_slem_rows(tiny_zoo):
    """SLEM traces of the tiny cross-vocab pair, replayed at constant k = 4, step exactly as the engine's rows
    (and `at_live_positions` finds every live step as traced), and a stop after the j-th drafter token takes the
    j-token draft's re-encoding, capped at k."""
    from bench.replay import FixedCosts, at_live_positions, run_row, slem_drafts
    from speccore.lookahead import ConfidenceStop, Constant
    from speccore.models import load_model
    from speccore.prompts import encode_row
    from tests.test_engine import NEW, engine_for, rows

    target = load_model(str(tiny_zoo["target-llama-g"]), dtype="float64")
    drafter = load_model(str(tiny_zoo["drafter-llama-m"]), dtype="float64")
    eng, _ = engine_for(target, tiny_zoo, "drafter-llama-m", "constant", 1, ("speculation.k=4",))
    picked = [r for r in rows() if r.row_id in ("r3", "r7")]
    results, steps = eng.generate(picked)
    cm = FixedCosts(0.2, {0: 1.0, 1: 1.1})
    for r, row in zip(results, picked):
        assert len(r.output_ids) == NEW
        trace = {"target": r.output_ids, "slem": slem_drafts(drafter, target.tokenizer, row,
                                                            encode_row(target.tokenizer, row), r.output_ids, 16)}
        assert len(trace["slem"]) == NEW
        assert all(len(at["top"]) == len(at["n"]) == len(at["acc"]) <= 16 for at in trace["slem"])
        assert all(a <= n for at in trace["slem"] for a, n in zip(at["acc"], at["n"]))
        got = [(s["k"], s["drafted"], s["accepted"]) for s in run_row(trace, Constant(4), cm, NEW)]
        live = [(s.k, s.drafted, s.accepted) for s in steps if s.row_id == r.row_id]
        assert got == live
        assert all(a == b for _, a, b in at_live_positions(trace, live))

    at = {"top": [0.9, 0.2, 0.9], "n": [2, 2, 4], "acc": [1, 2, 3]}  # the second drafter token merges into one
    row = {"target": [7] * 12, "slem": [at] * 12}
    # from position 1: the stop ends the draft after token 2 (0.2 < 0.5): its 2 target tokens, both kept
    assert run_row(row, ConfidenceStop(k_max=8, threshold=0.5), cm, 64)[0] == {"k": 8, "drafted": 2, "accepted": 2}
    assert run_row(row, Constant(3), cm, 64)[0] == {"k": 3, "drafted": 3, "accepted": 3}  # 4 re-encoded, capped
    assert run_row(row, Constant(1), cm, 64)[0] == {"k": 1, "drafted": 1, "accepted": 1}  # 1 drafter token, 2 cut


def test_check_finds_an_fp32_drafters_traces_step_exact(tiny_zoo, tmp_path, capsys):
    """`check` end to end on the tiny zoo: a same-vocab trace, then a SLEM trace of its outputs, then the rows
    decoded live at a constant k; with fp32 drafters every live step drafts and keeps what the trace says."""
    from bench.replay import main as replay_main

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
    target = str(tiny_zoo["target-llama-g"])
    common = ["--target", target, "--dataset", str(data), "--n", "2", "--max-new-tokens", "12", "--threads", "1"]
    same, cross = tmp_path / "same.json", tmp_path / "cross.json"
    replay_main(["trace", "--drafter", str(tiny_zoo["drafter-llama-g"]), *common, "--out", str(same)])
    replay_main(["trace", "--drafter", str(tiny_zoo["drafter-llama-m"]), "--cross-vocab", "--k-max", "6",
                 "--targets-from", str(same), *common, "--out", str(cross)])
    capsys.readouterr()
    for trace, drafter in ((same, "drafter-llama-g"), (cross, "drafter-llama-m")):
        replay_main(["check", str(trace), "--pair", str(tiny_zoo[drafter]), "--k", "4", "--max-new-tokens", "12",
                     "--threads", "1"])
        last = capsys.readouterr().out.strip().splitlines()[-1]
        same, total = int(last.split()[0]), int(last.split()[2])
        assert total > 2 and same == total and last.endswith("live steps draft and keep what the trace says"), last


def _toy_costs(tmp_path):
    """A bench result's costs part for the toy traces: drafter "d" at c = 0.2, and v(k) at 1, 4, 8 and 16."""
    costs = tmp_path / "c.json"
    costs.write_text(json.dumps({"costs": {"drafters": {"d": {"c": 0.2}},
                                           "target": {"v": {"0": 1, "1": 1.1, "4": 1.4, "8": 1.7, "16": 2.4}}}}))
    return costs


def _bounds_of(trace_set: dict, tmp_path, capsys) -> list[str]:
    """`bounds` on a toy trace set at k_max 4 and a budget of 5 tokens (the one its rows ran to), at the toy
    costs: each printed row as 'bound speedup'."""
    from bench.replay import main as replay_main

    trace = tmp_path / "t.json"
    trace.write_text(json.dumps(trace_set))
    replay_main(["bounds", str(trace), "--costs", str(_toy_costs(tmp_path)), "--drafter-cost", "d", "--k-max", "4",
                 "--max-new-tokens", "5"])
    return [ln.split(" | ")[0].strip("| ") + " " + ln.split(" | ")[2] for ln in capsys.readouterr().out.splitlines()[3:]]


def test_bounds_price_the_oracle_a_told_stop_and_the_best_fitted_threshold(tmp_path, capsys):
    # after token 0 (the prompt's forward), constant k_max = 4 drafts tokens 1-3 (room 3) and keeps 1, then
    # token 3 alone (room 1) and keeps it
    row = {"target": [7] * 5, "match": [1, 1, 0, 1, 1], "top": [0.5, 0.99, 0.99, 0.6, 0.6]}
    got = _bounds_of({"dataset": "toy", "rows": [row]}, tmp_path, capsys)
    # oracle: 4 tokens for 2 one-token drafts (1.3 each); told: the first step also pays c for the rejected
    # token 1 (4 / 2.8); fitted: 0.99 is kept 1 time in 2, 0.6 always, so theta > 0.5 drafts one token a step
    assert got == ["oracle 1.54×", "told after each drafted token 1.43×", "best fitted theta (0.52) 1.54×"]


def test_bounds_of_a_cross_vocab_trace_fit_theta_on_drafter_tokens(tmp_path, capsys):
    """A SLEM trace: the fitted stop reads a drafter token as kept when the cut after it keeps all its target
    tokens; no told stop is priced."""
    # from every position: drafter token 1 re-encodes to 1 target token, kept; the cut after token 2 to 2, of
    # which 1 is kept (token 2 is the first not kept); token 3's fate is never in question, so token 1's bin
    # reads kept always (were token 3 counted as not kept, half the time, and theta > 0.5 would stop after 1)
    at = {"top": [0.9, 0.6, 0.9], "n": [1, 2, 3], "acc": [1, 1, 1]}
    got = _bounds_of({"dataset": "toy", "cross_vocab": True, "rows": [{"target": [7] * 5, "slem": [at] * 5}]},
                     tmp_path, capsys)
    # constant k_max: from 1 (room 3) 2 target tokens drafted, 1 kept; from 3 (room 1) 1 drafted, kept. The oracle
    # drafts 1 each time (4 tokens / 2.6). Token 1's bin is kept always and token 2's never, so every theta
    # drafts 2 drafter tokens from 1 (2 target tokens, 1.6) and 1 from 3 (1.3): 4 / 2.9
    assert got == ["oracle 1.54×", "best fitted theta (0.02) 1.38×"]


def test_steptime_times_verifies_beside_drafter_forwards(tiny_zoo, capsys):
    """bench/steptime.py on the tiny zoo: every mode is timed, v(1) is printed, each drafter fp32 and int8."""
    from bench.steptime import main as steptime_main

    steptime_main(["--target", str(tiny_zoo["target-qwen-g"]), "--drafter", str(tiny_zoo["drafter-llama-g"]),
                   "--drafters", str(tiny_zoo["drafter-llama-g"]), "--reps", "1", "--threads", "1"])
    out = capsys.readouterr().out
    for mode in ("plain", "v1", "d+plain", "d+v1", "d5+v1"):
        assert f" {mode} " in out
    assert "v(1) = " in out and "after a drafter forward" in out
    assert "fp32 one-token step" in out and "int8 one-token step" in out
