"""SLRS: string-level rejection sampling (Timor et al., ICML 2025, arXiv 2502.05202, Algorithm 3) for
byte- or character-level drafters.

The idea of the paper: the drafter generates a *string*; that string determines a proposed target token t;
ψ(t) is the probability that the drafter's string process proposes t (summed over every drafter
tokenization that spells it); the target then runs ordinary rejection sampling on t with ψ as the proposal:
accept with probability min(1, p(t)/ψ(t)), otherwise sample from the residual norm(max(p - ψ, 0)). It is
lossless exactly when ψ is the true distribution of the proposed token, so the definition of "the token a
string proposes" matters.

Which token a string proposes (prefix tokens). Target tokens may be prefixes of one another ("a", "ab",
"abc"). "The probability that the drafter writes str(t)", π(t), is then not a distribution over tokens:
every string that starts with "abc" also starts with "ab" and "a", so Σ_t π(t) > 1, and using π in the
acceptance ratio and the residual would not be lossless. Here a string proposes its LONGEST prefix that is
a target token (maximal munch on the byte trie of the target's token strings), which makes ψ a proper
distribution that a trie walk computes exactly:

    ψ(t) = π(t) - Σ_{t' ∈ M(t)} π(t'),   M(t) = the tokens that extend t with no token in between

(the events "the string starts with t'" for t' ∈ M(t) are disjoint, and any longer token prefix starts
with one of them). This is not the target tokenizer's own first token (BPE merges depend on the whole
pre-token, which would make ψ intractable); losslessness needs only that ψ is the distribution of the
proposal, whatever deterministic string -> token rule defines it.

The process, per draft position, for a char-level drafter (every drafter token is one character, so
each string has exactly one drafter tokenization and π(s) is a product of per-character probabilities):

- the drafter is restricted to its canonical single-character tokens (a byte-fallback token that spells
  the same character as a char token is masked, which is what makes the tokenization unique) and its EOS;
- from the trie root (the row's context), it writes characters; each character's bytes walk the target
  trie. It stops when a character leaves the trie, when it reaches a trie leaf, when it writes EOS, or
  when it reaches a node that was not expanded (below). The proposal is the longest token on the walked
  path (EOS at the root proposes the target's EOS). Outcomes that would propose nothing (no token on the
  path yet) are masked and the rest renormalised, so every walk proposes a token;
- ψ is computed by expanding the trie level by level: each expanded node is one extra drafter position
  (one batched forward per level over all rows, tree attention over the row's KV cache: each node sees
  the context and its own ancestors). Then a dynamic program over the expanded nodes gives the mass that
  stops at each token. Expansion is deterministic given the drafter's distributions: a node is expanded
  while its walk probability is >= `min_mass` and the per-position budget `max_nodes` lasts (most probable
  first). An unexpanded node ends the walk (proposing its longest token), so pruning changes ψ (and so
  the acceptance rate) but never exactness.

Since ψ is computed in full, the proposal is drawn directly from ψ (one uniform from the row's generator):
the same distribution as walking and mapping, without a second pass. The draft then carries ψ as its q
row (target ids, sums to 1), so the standard rejection-sampling rule of `verify.verify_row` applies
unchanged. Positions chain as in standard SD: position i's ψ is computed with the drafter conditioned on
the context plus the strings of the proposals d1..d(i-1).

Why the emitted token is distributed exactly as p (one position; the chain follows by induction over
positions, as in Leviathan et al.): the proposal d has P(d = t) = ψ(t), with Σ_t ψ(t) = 1. It is kept
with probability min(1, p(t)/ψ(t)), so P(emit t, accepted) = min(p(t), ψ(t)), and
P(rejected) = 1 - Σ_t min(p(t), ψ(t)) = Σ_t max(p(t) - ψ(t), 0) =: Z. After a rejection t is drawn from
max(p - ψ, 0)/Z, so P(emit t) = min(p(t), ψ(t)) + max(p(t) - ψ(t), 0) = p(t). Nothing here restricts p:
it may be the full softmax or a top-k/top-p truncation, and ψ may give mass to tokens outside p's support
(those are always rejected). Greedy rows are verified by exact match against the target's argmax
(verify_row's greedy rule), so their output is target-alone greedy whatever is drafted; they draft by
following the drafter's argmax through the trie (no ψ).

Cost. Each draft position costs one drafter forward for the context plus one batched tree forward per
trie level (levels <= the longest target token in characters), with up to `max_nodes` tree tokens per
row. Exact, unpruned ψ needs a node for every character-boundary prefix of every target token in reach:
a few hundred for a small byte-level BPE, but 10^5-10^6 per position for a 100k+ vocabulary, which is why
SLRS is only offered for char/byte-level drafters and why the expansion is budgeted. Per expanded node
there is also O(|drafter chars|) bookkeeping (cached per trie node) and an O(|V_target|) ψ row per
position. For drafters with multi-character tokens the number of drafter tokenizations of a string grows
exponentially with its length (Lemma 3.1 of the paper), and speculate.py refuses them.

Fine print: a drafter whose probabilities underflow to exactly 0 on every unmasked outcome at the root
proposes nothing at that position (the draft simply ends there), which is still exact.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import sampling as smp
from .crossvocab import CrossVocabProposer, complete_utf8
from .draft_model import feed_for
from .verify import Draft


# --------------------------------------------------------------------------------------------- trie


class TokenTrie:
    """Byte trie of the target's token strings; each node knows the longest token on its path."""

    def __init__(self, canonical: dict[bytes, int]):
        self.children: list[dict[int, int]] = [{}]
        self.token: list[int] = [-1]  # target id spelled exactly by the node's bytes, or -1
        for s, tid in canonical.items():
            if not s:
                continue
            u = 0
            for byte in s:
                nxt = self.children[u].get(byte)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[u][byte] = nxt
                    self.children.append({})
                    self.token.append(-1)
                u = nxt
            self.token[u] = tid
        # longest[u]: the deepest token node on root..u (inclusive), as a target id (-1 if none)
        self.longest = [-1] * len(self.children)
        stack = [(0, -1)]
        while stack:
            u, best = stack.pop()
            best = self.token[u] if self.token[u] >= 0 else best
            self.longest[u] = best
            stack.extend((v, best) for v in self.children[u].values())


@dataclass
class Outcomes:
    """What each drafter slot (a character, or EOS) does from one trie node."""

    land: torch.Tensor  # [S] long: the trie node the character's bytes end on, -1 if they leave the trie (or EOS)
    stop: torch.Tensor  # [S] long: the target id proposed if the walk stops after this slot, -1: none (masked)
    expandable: torch.Tensor  # [S] bool: lands on a node with children (continuing can change the proposal)


class OutcomeTable:
    """Per-node outcome tables for a fixed slot alphabet, computed once per trie node and cached."""

    def __init__(self, trie: TokenTrie, slot_bytes: list[bytes | None], target_eos: int):
        self.trie = trie
        self.slot_bytes = slot_bytes  # None marks an EOS slot
        self.target_eos = target_eos
        self._cache: dict[int, Outcomes] = {}

    def __call__(self, u: int) -> Outcomes:
        out = self._cache.get(u)
        if out is None:
            out = self._cache[u] = self._build(u)
        return out

    def _build(self, u: int) -> Outcomes:
        t = self.trie
        S = len(self.slot_bytes)
        land, stop, expandable = [-1] * S, [-1] * S, [False] * S
        for j, bs in enumerate(self.slot_bytes):
            if bs is None:  # EOS: the string ends here
                stop[j] = self.target_eos if u == 0 else t.longest[u]
                continue
            w = u
            for byte in bs:
                nxt = t.children[w].get(byte)
                if nxt is None:
                    w = -1
                    break
                w = nxt
            if w >= 0:
                land[j] = w
                expandable[j] = bool(t.children[w])
                stop[j] = t.longest[w]
            else:  # left the trie inside this character: the longest token passed on the way
                w = u
                for byte in bs:
                    nxt = t.children[w].get(byte)
                    if nxt is None:
                        break
                    w = nxt
                stop[j] = t.longest[w]
        return Outcomes(torch.tensor(land, dtype=torch.long), torch.tensor(stop, dtype=torch.long),
                        torch.tensor(expandable, dtype=torch.bool))


# --------------------------------------------------------------------------------------------- tree


@dataclass
class Entry:
    """An expanded trie node: the drafter's distribution over slots after the node's characters."""

    node: int
    parent: int  # entry index, -1 for the root
    slot: int  # slot (character) that led here from the parent
    depth: int  # characters from the root
    pi: float  # walk probability used to rank expansions (unmasked drafter probabilities)
    probs: torch.Tensor | None = None  # [S] float64, set when the drafter's logits arrive
    children: dict[int, int] = field(default_factory=dict)  # slot -> entry index


class TreeBuilder:
    """Level-by-level expansion of the trie for one row and one draft position.

    `requests()` lists the nodes to evaluate next (entry indices, whose probs are missing); the caller runs
    the drafter on them and calls `fill(i, probs)`. Deterministic given the drafter's distributions.
    """

    def __init__(self, table: OutcomeTable, root_probs: torch.Tensor, greedy: bool, max_nodes: int,
                 min_mass: float, temperature: float = 1.0):
        self.table = table
        self.greedy = greedy
        self.temperature = temperature  # for the caller's slot_probs on the requested nodes
        self.max_nodes = max_nodes
        self.min_mass = min_mass
        self.entries = [Entry(node=0, parent=-1, slot=-1, depth=0, pi=1.0, probs=root_probs)]
        self.frontier = [0]  # entries of the last evaluated level

    def requests(self) -> list[int]:
        """Expand the next level; returns the new entries that need the drafter's distribution."""
        cands: list[tuple[float, int, int, int]] = []  # (-pi, parent entry, slot, node)
        for ei in self.frontier:
            e = self.entries[ei]
            out = self.table(e.node)
            if self.greedy:
                j = self._greedy_slot(e, out)
                if j >= 0 and bool(out.expandable[j]):
                    cands.append((-e.pi, ei, j, int(out.land[j])))
                continue
            pis = e.probs * e.pi
            ok = out.expandable & (pis >= self.min_mass) & (pis > 0)
            for j in torch.nonzero(ok).flatten().tolist():
                cands.append((-float(pis[j]), ei, j, int(out.land[j])))
        cands.sort()
        room = self.max_nodes - (len(self.entries) - 1)
        new = []
        for neg_pi, ei, j, v in cands[: max(0, room)]:
            parent = self.entries[ei]
            parent.children[j] = len(self.entries)
            new.append(len(self.entries))
            self.entries.append(Entry(node=v, parent=ei, slot=j, depth=parent.depth + 1, pi=-neg_pi))
        self.frontier = new
        return new

    def fill(self, i: int, probs: torch.Tensor) -> None:
        self.entries[i].probs = probs

    @staticmethod
    def _greedy_slot(e: Entry, out: Outcomes) -> int:
        """The drafter's argmax among slots that can still lead to a proposal (-1 if none)."""
        usable = (out.stop >= 0) | out.expandable
        if not bool(usable.any()):
            return -1
        return int(e.probs.masked_fill(~usable, -1.0).argmax())

    # ---- results ---------------------------------------------------------------------------------
    def psi(self, V: int) -> torch.Tensor | None:
        """ψ [V] float64 (sums to 1): the distribution of the proposed target token; None if nothing can be
        proposed (every outcome masked)."""
        n = len(self.entries)
        w: list[torch.Tensor | None] = [None] * n
        viable = [False] * n
        for i in range(n - 1, -1, -1):  # children first
            e = self.entries[i]
            out = self.table(e.node)
            valid = out.stop >= 0
            for j, ci in e.children.items():
                valid[j] = viable[ci]  # an expanded child: the walk continues there
            wi = e.probs * valid
            total = float(wi.sum())
            if total > 0:
                viable[i], w[i] = True, wi / total
        if not viable[0]:
            return None
        psi = torch.zeros(V, dtype=torch.float64)
        pi = [0.0] * n
        pi[0] = 1.0
        for i, e in enumerate(self.entries):
            if not viable[i] or pi[i] == 0.0:
                continue
            out = self.table(e.node)
            stop_here = w[i] > 0
            for j, ci in e.children.items():
                pi[ci] = pi[i] * float(w[i][j])
                stop_here[j] = False
            idx = torch.nonzero(stop_here).flatten()
            psi.index_add_(0, out.stop[idx], pi[i] * w[i][idx])
        return psi

    def greedy_proposal(self) -> int:
        """Follow the drafter's argmax from the root; the token where that walk stops (-1 if none)."""
        e = self.entries[0]
        best = -1  # the longest token on the walked path so far
        while True:
            out = self.table(e.node)
            j = self._greedy_slot(e, out)
            if j < 0:
                return best
            stop = int(out.stop[j])
            best = stop if stop >= 0 else best
            if j not in e.children:
                return best
            e = self.entries[e.children[j]]

    @property
    def n_nodes(self) -> int:
        return len(self.entries) - 1


def slot_probs(logits: torch.Tensor, slot_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """The drafter's distribution over the slots (its allowed tokens) at one position, float64 on the CPU
    (the trie bookkeeping is small and per node)."""
    x = logits[slot_ids.to(logits.device)].to("cpu", torch.float64)
    if temperature > 0:
        x = x / temperature
    return torch.softmax(x, -1)


# ----------------------------------------------------------------------------------------- proposer


class SlrsProposer(CrossVocabProposer):
    """SLRS with a character- or byte-level drafter: drafts target tokens with ψ as their q rows."""

    name = "slrs"
    reports_confidence = True  # its draft loop asks policy.should_continue with the drafter's top probability

    def __init__(self, drafter, target_tokenizer, target_vocab: int, target_eos: int = -1,
                 allow_special_tokens: bool = False, max_nodes: int = 256, min_mass: float = 1e-4):
        super().__init__(drafter, target_tokenizer, allow_special_tokens)
        from .vocab import _canonical

        self.V = target_vocab
        self.max_nodes = max_nodes
        self.min_mass = min_mass
        self.trie = TokenTrie(_canonical(target_tokenizer, self.t.bytes))
        # The drafter's slots: one canonical token per single character (so a string has one drafter
        # spelling), then its EOS tokens when the target has an EOS to propose for them.
        d_canon = _canonical(drafter.tokenizer, self.d.bytes)
        chars = sorted((i, s) for s, i in d_canon.items() if _one_char(s))
        eos = sorted(self.stop_ids) if target_eos >= 0 else []
        self.slot_ids = torch.tensor([i for i, _ in chars] + eos, dtype=torch.long)
        self.table = OutcomeTable(self.trie, [s for _, s in chars] + [None] * len(eos), target_eos)
        self.target_eos = target_eos

    # ---- one step --------------------------------------------------------------------------------
    def propose(self, states, ks: list[int]) -> list[Draft]:
        B = len(states)
        live = [False] * B
        drafted: list[bytes] = [b""] * B  # text of the proposed target tokens so far
        ids: list[list[int]] = [[] for _ in range(B)]
        qs: list[list[torch.Tensor]] = [[] for _ in range(B)]
        reasons = ["k"] * B
        for b, (st, k) in enumerate(zip(states, ks)):
            if not k:
                continue
            v = self.views[b]
            self._sync_view(v, st.out_ids)
            if v.text[v.covered :]:  # the output ends inside a character: the drafter cannot see it yet
                reasons[b] = "misaligned"
                continue
            live[b] = True
        nodes_spent = [0] * B
        while any(live):
            feeds = [feed_for(self.lm, b, self.views[b].ids + self.d.encode(drafted[b])) if live[b] else []
                     for b in range(B)]
            logits = self.lm.forward(feeds, last_only=True)  # [B, V_d]
            builders: list[TreeBuilder | None] = [None] * B
            for b in range(B):
                if live[b]:
                    st = states[b]
                    root = slot_probs(logits[b], self.slot_ids, st.params.temperature)
                    builders[b] = TreeBuilder(self.table, root, st.params.greedy, self.max_nodes, self.min_mass,
                                              st.params.temperature)
            self._expand(builders)
            for b, tb in enumerate(builders):
                if tb is None:
                    continue
                st = states[b]
                nodes_spent[b] += tb.n_nodes + 1
                if st.params.greedy:
                    tok, q, top = tb.greedy_proposal(), None, float(tb.entries[0].probs.max())
                else:
                    q = tb.psi(self.V)
                    tok = smp.sample(q, st.gen) if q is not None else -1
                    top = float(q.max()) if q is not None else 0.0
                if tok < 0:
                    live[b], reasons[b] = False, "no_match"
                    continue
                ids[b].append(tok)
                if q is not None:
                    qs[b].append(q)
                text = self.t.bytes[tok] if tok < len(self.t.bytes) and self.t.bytes[tok] else b""
                drafted[b] += text
                i = len(ids[b])
                go = st.policy.should_continue(i, top)  # every token: the policy learns from each confidence
                if tok == self.target_eos:
                    live[b], reasons[b] = False, "eos"
                elif i >= ks[b]:
                    live[b] = False
                elif complete_utf8(drafted[b]) != len(drafted[b]):  # ends inside a character
                    live[b], reasons[b] = False, "misaligned"
                elif not go:
                    live[b], reasons[b] = False, "confidence"
        drafts = []
        for b in range(B):
            q = torch.stack(qs[b]).to(self.lm.device) if qs[b] and len(qs[b]) == len(ids[b]) else None  # [n, V]
            drafts.append(Draft(ids=ids[b], q=q, n_drafter_tokens=nodes_spent[b], stop_reason=reasons[b]))
        return drafts

    # ---- tree expansion: one batched forward per trie level ----------------------------------------
    def _expand(self, builders: list[TreeBuilder | None]) -> None:
        lm = self.lm
        B = len(builders)
        T0 = lm.mask.shape[1]  # cache columns before the tree
        base = lm.mask.clone()  # [B, T0]
        lengths = lm.lengths.clone()  # [B] valid context tokens per row
        cols: list[dict[int, int]] = [{} for _ in range(B)]  # entry index -> cache column
        T = T0
        try:
            while True:
                reqs = [tb.requests() if tb is not None else [] for tb in builders]
                n = max((len(r) for r in reqs), default=0)
                if n == 0:
                    return
                ids = torch.zeros(B, n, dtype=torch.long)
                pos = torch.zeros(B, n, dtype=torch.long)
                allow = torch.zeros(B, n, T + n, dtype=torch.bool)  # [B, q, kv]
                allow[:, :, :T0] = base[:, None, :]
                for b, r in enumerate(reqs):
                    tb = builders[b]
                    for j, ei in enumerate(r):
                        e = tb.entries[ei]
                        ids[b, j] = int(self.slot_ids[e.slot])
                        pos[b, j] = int(lengths[b]) + e.depth - 1
                        a = e.parent
                        while a > 0:  # ancestors in the tree (the root is the context itself)
                            allow[b, j, cols[b][a]] = True
                            a = tb.entries[a].parent
                        cols[b][ei] = T + j
                    for j in range(n):
                        allow[b, j, T + j] = True  # itself (and padding queries attend to themselves only)
                dtype = next(lm.model.parameters()).dtype
                mask = torch.zeros(B, 1, n, T + n, dtype=dtype)
                mask.masked_fill_(~allow[:, None], torch.finfo(dtype).min)
                out = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device),
                               position_ids=pos.to(lm.device), past_key_values=lm.cache,
                               cache_position=torch.arange(T, T + n, device=lm.device), use_cache=True)
                logits = out.logits  # [B, n, V_d]
                T += n
                for b, r in enumerate(reqs):
                    tb = builders[b]
                    for j, ei in enumerate(r):
                        tb.fill(ei, slot_probs(logits[b, j], self.slot_ids, tb.temperature))
        finally:  # drop the tree's columns: the cache is the context again
            for layer in lm.cache.layers:
                if getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel():
                    layer.keys = layer.keys[..., :T0, :]
                    layer.values = layer.values[..., :T0, :]


def _one_char(s: bytes) -> bool:
    try:
        return len(s.decode("utf-8")) == 1
    except UnicodeDecodeError:
        return False


__all__ = ["SlrsProposer", "TokenTrie", "OutcomeTable", "TreeBuilder", "slot_probs"]
