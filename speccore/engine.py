"""The speculative core's entry point: a batch of Rows in, per-row results and per-step records out.

Each step: every active row proposes a draft of k tokens (k from its lookahead policy, 0 = plain
decoding), the target verifies all drafts in one batched forward over [pending, d1..dk], each row keeps
its accepted prefix plus one bonus token, and both caches roll back the rejected tail. The target
cache always holds every token of a row except the last emitted one (`pending`).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import torch

from . import sampling as smp
from .decoder import CachedLM
from .lookahead import CostAware, batch_k
from .prompts import encode_row
from .rows import Row
from .verify import Draft, verify_row

log = logging.getLogger(__name__)


@dataclass
class RowResult:
    row_id: str
    status: str  # ok | error | skipped
    error_type: str | None = None
    error_message: str | None = None
    output_text: str | None = None
    output_ids: list[int] = field(default_factory=list)
    n_prompt_tokens: int = 0
    n_output_tokens: int = 0
    finish_reason: str | None = None  # eos | stop | length
    algorithm: str = "none"
    lookahead_policy: str = "none"
    wall_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    seed: int | None = None
    fallback: str | None = None  # why this row fell back to target-only decoding, if it did
    batch: int = -1  # which batch of its shard the row ran in (rows of a batch share wall time)


@dataclass
class StepRecord:
    row_id: str
    step: int
    k: int
    drafted: int  # target tokens
    drafted_drafter: int  # drafter tokens (same as drafted for same-vocab)
    accepted: int
    stop_reason: str
    draft_ms: float
    verify_ms: float
    batch_size: int
    decision: str = ""  # the lookahead policy's decision and its inputs (JSON), for offline comparison


@dataclass
class RowState:
    row: Row
    prompt_ids: list[int]
    params: smp.SamplingParams
    gen: torch.Generator
    seed: int
    max_new: int
    stop: tuple[str, ...]
    policy: object
    out_ids: list[int] = field(default_factory=list)
    finish: str | None = None
    text_end: int | None = None  # output_text length when a stop string ended the row
    result: RowResult | None = None
    t0: float = 0.0
    nstep: int = 0
    batch: int = -1
    drafted_at: int = 0  # len(ids) after the row last drafted: the drafter has not seen the tokens since

    @property
    def drafter_behind(self) -> int:
        return len(self.ids) - self.drafted_at

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.out_ids


class PlainPolicy:
    """Target-only decoding: never drafts."""

    name = "none"

    def propose_k(self) -> int:
        return 0

    def should_continue(self, i: int, top_prob: float) -> bool:
        return False

    def observe(self, *args, **kwargs) -> None:
        pass

    def decision(self) -> dict:
        return {}


class Engine:
    """Generates for batches of Rows with a target and an optional proposer (drafter)."""

    def __init__(self, target, *, proposer=None, policy_factory=None, sampling=None, batch_size: int = 4,
                 run_seed: int = 0, allow_special_tokens: bool = False, algorithm: str = "none"):
        self.target = target  # LoadedModel
        self.proposer = proposer
        self.policy_factory = policy_factory or PlainPolicy
        self.sampling = sampling  # config.SamplingConfig
        self.batch_size = batch_size
        self.run_seed = run_seed
        self.allow_special_tokens = allow_special_tokens
        self.algorithm = algorithm if proposer is not None else "none"
        self.eos = set(target.eos_token_ids)
        self.vocab = target.model.get_output_embeddings().weight.shape[0]  # width of the target's logits
        self._learn_costs = False

    # ---- preparation -------------------------------------------------------------------------
    def _prepare(self, row: Row) -> RowState | RowResult:
        if not row.ok:
            return RowResult(row_id=row.row_id, status="error", error_type=row.error_type,
                             error_message=row.error_message)
        s = self.sampling
        params = smp.SamplingParams(
            temperature=s.temperature if row.temperature is None else row.temperature,
            top_p=s.top_p if row.top_p is None else row.top_p,
            top_k=s.top_k if row.top_k is None else row.top_k,
        )
        max_new = s.max_new_tokens if row.max_new_tokens is None else row.max_new_tokens
        try:
            ids = encode_row(self.target.tokenizer, row, self.allow_special_tokens)
        except Exception as e:  # a template or tokenizer failure is this row's problem only
            kind = "invalid_messages" if row.messages is not None else "generation_error"
            return RowResult(row_id=row.row_id, status="error", error_type=kind,
                             error_message=f"could not encode the prompt: {type(e).__name__}: {e}")
        if not ids:
            return RowResult(row_id=row.row_id, status="error", error_type="invalid_prompt",
                             error_message="the prompt encodes to zero tokens")
        ctx = self.target.context_length
        if len(ids) + max_new > ctx:
            return RowResult(row_id=row.row_id, status="error", error_type="prompt_too_long",
                             n_prompt_tokens=len(ids),
                             error_message=f"{len(ids)} prompt tokens + max_new_tokens {max_new} exceed the "
                                           f"target's context of {ctx} tokens")
        seed = smp.row_seed(self.run_seed, row.row_id, row.seed)
        policy = self.policy_factory() if self.proposer is not None else PlainPolicy()
        policy.drafter_confidence = bool(getattr(self.proposer, "reports_confidence", False))
        return RowState(row=row, prompt_ids=ids, params=params, gen=smp.make_generator(seed), seed=seed,
                        max_new=max_new, stop=tuple(row.stop if row.stop is not None else s.stop), policy=policy)

    def _prepare_or_error(self, row: Row) -> RowState | RowResult:
        """_prepare, but an unexpected failure costs this row only, never its batch or shard."""
        try:
            return self._prepare(row)
        except Exception as e:  # noqa: BLE001
            return RowResult(row_id=row.row_id, status="error", error_type="generation_error",
                             error_message=f"could not prepare the row: {type(e).__name__}: {e}")

    # ---- public entry point ------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, rows: list[Row]) -> tuple[list[RowResult], list[StepRecord]]:
        prepared = [self._prepare_or_error(r) for r in rows]
        states = [p for p in prepared if isinstance(p, RowState)]
        # Measured costs steer k. Under sampling, k decides which uniforms a standard/TLI/SLRS row
        # draws, so learning from wall-clock timings would make a row's sample depend on machine load
        # and batch: learn only where k cannot change any output (greedy rows, or exact-match
        # proposers that draw one uniform per emitted token); otherwise keep the prior costs.
        self._learn_costs = getattr(self.policy_factory, "cost_model", None) is not None and (
            self.algorithm in ("ngram", "slem") or all(st.params.greedy for st in states))
        steps: list[StepRecord] = []
        # Similar lengths share a batch (less padding); results never depend on the batch.
        order = sorted(states, key=lambda st: len(st.prompt_ids))
        t_gen = time.perf_counter()
        for i in range(0, len(order), self.batch_size):
            if i:
                done = order[:i]
                tokens = sum(len(st.out_ids) for st in done)
                log.info("rows %d/%d, %d tokens, %.2f tok/s, acceptance %.2f", i, len(order), tokens,
                         tokens / (time.perf_counter() - t_gen),
                         sum(st.result.accepted for st in done if st.result) /
                         max(1, sum(st.result.drafted for st in done if st.result)))
            batch = order[i : i + self.batch_size]
            for st in batch:
                st.batch = i // self.batch_size
            try:
                self._run_batch(batch, steps)
            except Exception as e:  # noqa: BLE001 - isolate the failure to the rows it hit
                log.warning("batch of %d rows failed (%s: %s); isolating", len(batch), type(e).__name__, e,
                            exc_info=log.isEnabledFor(logging.DEBUG))
                if len(batch) == 1:
                    st = batch[0]
                    st.result = RowResult(row_id=st.row.row_id, status="error", error_type="generation_error",
                                          error_message=f"{type(e).__name__}: {e}", seed=st.seed)
                else:  # retry one by one so a single bad row cannot take its batch down
                    for st in batch:
                        st.out_ids, st.finish, st.text_end, st.nstep, st.drafted_at = [], None, None, 0, 0
                        st.gen = smp.make_generator(st.seed)
                        st.policy = self.policy_factory() if self.proposer is not None else PlainPolicy()
                    steps[:] = [s for s in steps if s.row_id not in {b.row.row_id for b in batch}]
                    for st in batch:
                        try:
                            self._run_batch([st], steps)
                        except Exception as e1:  # noqa: BLE001
                            st.result = RowResult(row_id=st.row.row_id, status="error",
                                                  error_type="generation_error",
                                                  error_message=f"{type(e1).__name__}: {e1}", seed=st.seed)
        return [p if isinstance(p, RowResult) else p.result for p in prepared], steps

    # ---- one batch ---------------------------------------------------------------------------
    def _run_batch(self, batch: list[RowState], steps: list[StepRecord]) -> None:
        t_start = time.perf_counter()
        for st in batch:
            st.t0 = t_start
            st.result = RowResult(row_id=st.row.row_id, status="ok", algorithm=self.algorithm,
                                  lookahead_policy=st.policy.name, seed=st.seed,
                                  n_prompt_tokens=len(st.prompt_ids), batch=st.batch)
        target = CachedLM(self.target.model, len(batch))
        last = target.forward([st.prompt_ids for st in batch], last_only=True)  # [B, V]
        t_prompt = time.perf_counter() - t_start
        top = self._argmax(batch, last[:, None])
        for b, st in enumerate(batch):
            tok = verify_row(last[b][None], Draft(ids=[]), st.params, st.gen, top[b])[1][0]
            self._emit(st, tok)
        verify_s0 = time.perf_counter() - t_start
        for st in batch:
            st.result.verify_s += verify_s0
        active = [st for st in batch if st.finish is None]
        if len(active) < len(batch):
            target.select([b for b, st in enumerate(batch) if st.finish is None])
        proposer = self.proposer
        if proposer is not None and active:
            try:
                proposer.start(active)
            except Exception as e:  # noqa: BLE001 - a broken drafter must not cost the rows
                proposer = self._fall_back(batch, e)
        costs = getattr(self.policy_factory, "cost_model", None)
        if self._learn_costs:  # the target's seconds per prompt cell predict what an unmeasured verify costs
            costs.observe_prefill(len(batch) * max(len(st.prompt_ids) for st in batch), t_prompt)
        while active:
            B = len(active)
            if costs is not None:  # costs are measured and read at the step's rows per forward
                costs.batch_size = B
            ks, decisions, rooms = [], [], []
            for st in active:
                room = max(0, st.max_new - len(st.out_ids) - 1)  # the bonus token always comes on top
                rooms.append(room)
                ks.append(min(st.policy.propose_k(), room))
                decisions.append(st.policy.decision())
            if B > 1 and self._learn_costs and all(isinstance(st.policy, CostAware) for st in active):
                # one verify forward for the batch: decide its width for the batch (greedy or exact-match
                # rows only, where k cannot change any output, so results still never depend on the batch)
                ks = batch_k([st.policy for st in active], ks, rooms, costs,
                             behind=[st.drafter_behind for st in active])
                decisions = [{**st.policy.decision(), "batch_k": k} for st, k in zip(active, ks)]
            decisions = [json.dumps(d, default=float, separators=(",", ":")) for d in decisions]
            t0 = time.perf_counter()
            drafts = [Draft(ids=[]) for _ in active]
            if proposer is not None and any(ks):
                try:
                    drafts = self._checked(proposer.propose(active, ks), ks, self.vocab)
                except Exception as e:  # noqa: BLE001 - fall back to target-only decoding, still exact
                    proposer = self._fall_back(batch, e)
                    drafts = [Draft(ids=[]) for _ in active]
            t1 = time.perf_counter()
            logits = target.forward([[st.out_ids[-1]] + d.ids for st, d in zip(active, drafts)])  # [B, K+1, V]
            accepted = []
            top = self._argmax(active, logits)
            for b, (st, d) in enumerate(zip(active, drafts)):
                n = len(d.ids)
                a, new = verify_row(logits[b, : n + 1], d, st.params, st.gen,
                                    top[b][: n + 1] if top[b] is not None else None)
                accepted.append(a)
                for tok in new:
                    if st.finish is None:
                        self._emit(st, tok)
            target.keep([1 + a for a in accepted])
            t2 = time.perf_counter()
            draft_s, verify_s = t1 - t0, t2 - t1
            if self._learn_costs:  # the batch's step: its longest draft set the verify width
                self._learn(costs, drafts, accepted, draft_s, verify_s, proposer)
            for st, d, a, k, why in zip(active, drafts, accepted, ks, decisions):
                st.nstep += 1
                if d.ids:
                    st.drafted_at = len(st.ids)
                r = st.result
                r.steps += 1
                r.drafted += len(d.ids)
                r.accepted += a
                r.draft_s += draft_s
                r.verify_s += verify_s
                st.policy.observe(k=k, drafted=len(d.ids), accepted=a, draft_s=draft_s, verify_s=verify_s)
                steps.append(StepRecord(
                    row_id=st.row.row_id, step=st.nstep, k=k, drafted=len(d.ids),
                    drafted_drafter=d.n_drafter_tokens if d.n_drafter_tokens is not None else len(d.ids),
                    accepted=a, stop_reason=d.stop_reason if k else "no_draft",
                    draft_ms=draft_s * 1e3, verify_ms=verify_s * 1e3, batch_size=B, decision=why))
            keep = [b for b, st in enumerate(active) if st.finish is None]
            try:
                if proposer is not None:
                    proposer.observe(active, accepted)
                if proposer is not None and len(keep) < len(active):
                    proposer.select(keep)
            except Exception as e:  # noqa: BLE001
                proposer = self._fall_back(batch, e)
            if len(keep) < len(active):
                target.select(keep)
                active = [active[b] for b in keep]
        for st in batch:
            self._finish(st)

    @staticmethod
    def _learn(cm, drafts: list[Draft], accepted: list[int], draft_s: float, verify_s: float, proposer) -> None:
        """Feed one step to the shared cost model: its costs and the pair's acceptance.

        The drafter's one-off catch-up (over a prompt, or over the tokens of plain steps) is not a cost of
        each drafted token: it leaves the draft seconds the cost model learns c from, and a step whose
        catch-up could not be told apart teaches no c at all (0 seconds: the model skips it). The catch-up
        is learnt on its own, per cell, to price the next probe's (`lookahead.batch_k`).
        """
        catch_up = getattr(proposer, "catch_up_s", 0.0) if proposer is not None else 0.0
        steady_s = 0.0 if catch_up is None else max(0.0, draft_s - catch_up)
        if catch_up:
            cm.observe_catch_up(getattr(proposer, "catch_up_cells", 0), catch_up)
        cm.update(max(len(d.ids) for d in drafts), steady_s, verify_s)
        for d, a in zip(drafts, accepted):
            if d.ids:
                cm.observe_acceptance(len(d.ids), a)

    @staticmethod
    def _argmax(states: list[RowState], logits: torch.Tensor) -> list[list[int] | None]:
        """The greedy rows' argmax at every position [B, n], in one pass and one device sync."""
        greedy = [st.params.greedy for st in states]
        if not any(greedy):
            return [None] * len(states)
        top = logits.argmax(-1).tolist()
        return [t if g else None for t, g in zip(top, greedy)]

    # ---- drafter faults ----------------------------------------------------------------------
    @staticmethod
    def _checked(drafts: list[Draft], ks: list[int], vocab: int) -> list[Draft]:
        """Reject a malformed proposal (wrong count, too long, ids outside the target vocabulary)."""
        if len(drafts) != len(ks):
            raise ValueError(f"proposer returned {len(drafts)} drafts for {len(ks)} rows")
        for d, k in zip(drafts, ks):
            if len(d.ids) > k or any(not isinstance(t, int) or not 0 <= t < vocab for t in d.ids):
                raise ValueError(f"proposer returned a malformed draft {d.ids[:8]!r} for k={k}")
            if d.q is not None and tuple(d.q.shape) != (len(d.ids), vocab):
                raise ValueError(f"proposer returned q of shape {tuple(d.q.shape)} for {len(d.ids)} ids")
        return drafts

    def _fall_back(self, batch: list[RowState], e: Exception):
        """The drafter failed: this batch goes on with target-only decoding (exact), and says so."""
        why = f"drafter failed, target-only from here: {type(e).__name__}: {e}"[:500]
        log.warning("%s (%d rows)", why, len(batch))
        for st in batch:
            if st.result is not None and st.result.fallback is None:
                st.result.fallback = why
        return None

    # ---- per-row bookkeeping -----------------------------------------------------------------
    def _emit(self, st: RowState, tok: int) -> None:
        st.out_ids.append(tok)
        if tok in self.eos:
            st.finish = "eos"
        elif st.stop and self._hit_stop(st):
            st.finish = "stop"
        elif len(st.out_ids) >= st.max_new:
            st.finish = "length"
        if st.finish is not None:
            st.result.wall_s = time.perf_counter() - st.t0

    def _decode(self, ids: list[int]) -> str:
        return self.target.tokenizer.decode(ids, skip_special_tokens=True)

    def _hit_stop(self, st: RowState) -> bool:
        text = self._decode(st.out_ids)
        longest = max(len(s) for s in st.stop)
        prev = len(self._decode(st.out_ids[:-1]))
        window_start = max(0, prev - longest + 1)
        hits = [i for s in st.stop if (i := text.find(s, window_start)) >= 0]
        if hits:
            st.text_end = min(hits)
            return True
        return False

    def _finish(self, st: RowState) -> None:
        r = st.result
        if r.status != "ok":
            return
        ids = st.out_ids[:-1] if st.finish == "eos" else st.out_ids
        text = self._decode(ids)
        if st.text_end is not None:
            text = text[: st.text_end]
        r.output_ids = list(st.out_ids)
        r.output_text = text
        r.n_output_tokens = len(st.out_ids)
        r.finish_reason = st.finish
