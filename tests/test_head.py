"""bench/head.py: the AUC, heads that find a signal where there is one, and labels read off teacher-forced models."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.head import auc, evaluate, label, main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_auc_counts_each_kept_rejected_pair_and_ties_as_half():
    # kept 0.35 beats rejected 0.1 but not 0.4; kept 0.8 beats both: 3 of 4 pairs
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    # kept 0.5 ties rejected 0.5 (a half) and beats 0.2
    assert auc([0.5, 0.5, 0.2], [1, 0, 0]) == 0.75
    assert auc([0.3, 0.3, 0.3], [1, 0, 1]) == 0.5
    assert np.isnan(auc([0.1, 0.2], [1, 1]))


def _synthetic(y_from_hidden: bool, n: int = 3000) -> dict:
    g = np.random.default_rng(0)
    h = g.normal(size=(n, 8)).astype(np.float32)
    p = g.uniform(0.05, 0.95, n)
    if y_from_hidden:
        y = h[:, 0] + 0.3 * g.normal(size=n) > 0
    else:
        y = g.uniform(size=n) < p
    return {"y": y, "p": p, "p2": (1 - p) * g.uniform(0.2, 0.9, n), "entropy": g.uniform(0, 3, n), "h": h,
            "conversation": np.repeat(np.arange(30), n // 30)}


def test_a_hidden_state_head_finds_what_the_top_probability_misses():
    rows = evaluate(_synthetic(y_from_hidden=True), sizes=[500, 10**6], l2s=[0.01])
    assert [r["n"] for r in rows] == [500, 2200]  # capped at the 22 training conversations' positions
    for r in rows:
        assert abs(r["top p"] - 0.5) < 0.05 and abs(r["small head"] - 0.5) < 0.05
        assert r["hidden head, L2 0.01"] > 0.9


def test_where_only_the_top_probability_speaks_the_heads_match_it():
    (r,) = evaluate(_synthetic(y_from_hidden=False), sizes=[2200], l2s=[1.0])
    assert 0.75 < r["top p"]
    assert abs(r["small head"] - r["top p"]) < 0.02 and abs(r["hidden head, L2 1"] - r["top p"]) < 0.02


def test_label_reads_agreement_off_both_models(tiny_zoo):
    from speccore.models import load_model

    target = load_model(str(tiny_zoo["target-llama-g"]), dtype="float64").model
    drafter = load_model(str(tiny_zoo["drafter-llama-g"]), dtype="float64").model
    ids = list(range(5, 40))
    out = label(target, drafter, ids, start=10)
    x = torch.tensor([ids])
    with torch.inference_mode():
        t_next = target(input_ids=x).logits[0].argmax(-1)
        d_logits = drafter(input_ids=x).logits[0]
    d_probs = torch.softmax(d_logits, -1)
    # position 10 predicts ids[11]; the last position predicts past the text and is not labelled
    assert out["y"].tolist() == (d_logits.argmax(-1) == t_next)[10:-1].tolist()
    assert len(out["y"]) == len(ids) - 11 and out["h"].shape == (len(ids) - 11, drafter.config.hidden_size)
    assert np.allclose(out["p"], d_probs[10:-1].max(-1).values.numpy())
    assert (out["p"] >= out["p2"]).all() and (out["entropy"] > 0).all()


def test_collect_keeps_the_human_reply_exchanges_of_a_truncated_file(tiny_zoo, tmp_path, capsys):
    records = [
        {"id": "a", "conversations": [{"from": "human", "value": "def add(a, b):"},
                                      {"from": "gpt", "value": "    return a + b\n\nprint(add(1, 2))"}]},
        {"id": "b", "conversations": [{"from": "gpt", "value": "hello"}, {"from": "human", "value": "hi"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "  "},
                                      {"from": "gpt", "value": "a blank question gets no reply worth labelling"}]},
        {"id": "d", "conversations": [{"from": "human", "value": "The cat"},
                                      {"from": "gpt", "value": " sat on the mat and looked at the dog."}]},
        {"id": "f", "conversations": [{"from": "human", "value": "one"}, {"from": "human", "value": "two more words"}]},
        {"id": "e", "conversations": [{"from": "human", "value": "x = 1"}, {"from": "gpt", "value": "y = 2"}]},
    ]
    text = json.dumps(records)
    path = tmp_path / "sharegpt.json"
    path.write_text(text[: text.index('"id": "e"') + 12])  # cut inside the last record, as the packaged file is
    out = tmp_path / "head.npz"
    with pytest.warns(UserWarning, match="truncated"):
        main(["collect", "--target", str(tiny_zoo["target-llama-g"]), "--drafter", str(tiny_zoo["drafter-llama-g"]),
              "--path", str(path), "--skip", "0", "--min-reply-tokens", "2", "--dtype", "float64", "--threads", "1",
              "--no-prepack", "--out", str(out)])
    data = np.load(out)
    assert sorted(set(data["conversation"].tolist())) == [0, 3]
    assert set(data) == {"y", "p", "p2", "entropy", "h", "conversation"}
    assert "from 2 conversations" in capsys.readouterr().out
