"""Known-reward token MDP (`data=known_reward`): the synthetic check of method.md.

Why: on real text the "true" dense reward is unknown. Here it is a hidden table
``r*(prev, next) ~ N(0, 1)`` and the expert is computed from it exactly, so every quantity the
framework estimates has a closed-form answer.

Conventions (n = ``n_tokens``): ids ``0..n-1`` are the symbols ``"A", "B", ...``, id ``n`` is
EOS; ``R`` is ``(n+1, n+1)`` with row = previous token (row ``n`` = BOS, the empty prefix) and
column = next action (column ``n`` = EOS). An episode starts from a *start state* (BOS or a
symbol, the previous token the first action follows) with a *horizon* h <= H: it ends at EOS
(earning ``R[prev, EOS]``) or after h actions (``V = 0`` after the last); discount 1. Tables over
time are indexed by ``t = H - (steps left)``, so an episode of horizon h runs ``t = H-h .. H-1``
and one soft value iteration of length H serves every horizon.

Experts: the soft-optimal policy pi* of R* (``temperature=1, epsilon=0``), for which
``log pi*(y) = R*(y) - V(start, h)`` for every complete episode (method.md section 2, asserted to
1e-10), or a per-state tempered / noisy version of it, ``pi(a|s) = (1-eps) softmax(log pi*(.|s)/tau)_a
+ eps/(n+1)``, whose sequence mode is no longer the best answer. All maths is float64.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import torch

logger = logging.getLogger(__name__)

FAMILY = "known_reward"
SPLITS: tuple[str, ...] = ("sft", "rl", "val", "eval")
HELD_OUT: tuple[str, ...] = ("rl", "val", "eval")  # prompt-disjoint where the prompt space allows
DEFAULT_SIZES: dict[str, int] = {"sft": 2000, "rl": 512, "val": 256, "eval": 512}
DEFAULT_FRACTIONS: dict[str, float] = {"rl": 0.5, "val": 0.25, "eval": 0.25}
BOS_SYMBOL = "^"  # the start state "no previous symbol" as prompt text
_MAX_SYMBOLS = 26  # one capital letter per symbol

IntOrSeq = int | Sequence[int] | torch.Tensor | None


def symbols(n_tokens: int = 8) -> list[str]:
    """The symbol strings ``"A".."H"`` (for n_tokens=8), one letter each."""
    _check_n_tokens(n_tokens)
    return [chr(ord("A") + i) for i in range(n_tokens)]


def to_text(seq: Sequence[int], n_tokens: int = 8) -> str:
    """Space-separated symbols, dropping EOS (the framework tokenizer appends its own)."""
    syms = symbols(n_tokens)
    out: list[str] = []
    for tok in seq:
        tok = int(tok)
        if tok == n_tokens:
            continue
        if not 0 <= tok < n_tokens:
            raise ValueError(
                f"to_text: token id {tok} is outside 0..{n_tokens} (symbols 0..{n_tokens - 1}, "
                f"EOS={n_tokens}); pass the right n_tokens or fix the sequence"
            )
        out.append(syms[tok])
    return " ".join(out)


def from_text(text: str, n_tokens: int = 8) -> list[int] | None:
    """Parse space-separated symbols back to ids (no EOS appended); None if a chunk is not a symbol."""
    lookup = {s: i for i, s in enumerate(symbols(n_tokens))}
    ids = [lookup.get(chunk) for chunk in text.split()]
    return None if None in ids else ids


def _check_n_tokens(n_tokens: int) -> None:
    if not 1 <= n_tokens <= _MAX_SYMBOLS:
        raise ValueError(
            f"n_tokens={n_tokens} is out of range; use 1..{_MAX_SYMBOLS} (one letter per symbol)"
        )


def sample_reward_table(n_tokens: int, seed: int) -> torch.Tensor:
    """The hidden reward ``R ~ N(0, 1)``, (n+1, n+1), from a private seeded generator."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(n_tokens + 1, n_tokens + 1, generator=gen, dtype=torch.float64)


def _continuation(values: torch.Tensor) -> torch.Tensor:
    """Next-step values over states (n+1,) -> value earned after each action (n+1,): EOS earns 0."""
    cont = values.clone()  # (n+1,)
    cont[-1] = 0.0  # EOS ends the episode; BOS is never reached again
    return cont


def soft_value_iteration(R: torch.Tensor, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward soft value iteration at temperature 1.

    Returns V (H+1, n+1) with V[H] = 0, and logpi (H, n+1, n+1) with
    logpi[t, p, a] = Q_t(p, a) - V_t(p), Q_t(p, a) = R[p, a] + V_{t+1}(a) (0 for EOS).
    """
    n1 = R.shape[0]
    V = torch.zeros(horizon + 1, n1, dtype=torch.float64)  # (H+1, n+1)
    logpi = torch.empty(horizon, n1, n1, dtype=torch.float64)  # (H, n+1, n+1)
    for t in range(horizon - 1, -1, -1):
        Q = R + _continuation(V[t + 1]).unsqueeze(0)  # (n+1 prev, n+1 action)
        V[t] = torch.logsumexp(Q, dim=1)  # (n+1,)
        logpi[t] = Q - V[t].unsqueeze(1)
    return V, logpi


def hard_value_iteration(R: torch.Tensor, horizon: int) -> torch.Tensor:
    """Backward max-plus DP: M (H+1, n+1), M[t, p] = best return reachable from prev p at t."""
    n1 = R.shape[0]
    M = torch.zeros(horizon + 1, n1, dtype=torch.float64)  # (H+1, n+1)
    for t in range(horizon - 1, -1, -1):
        Q = R + _continuation(M[t + 1]).unsqueeze(0)  # (n+1, n+1)
        M[t] = Q.max(dim=1).values
    return M


def policy_values(R: torch.Tensor, logpi: torch.Tensor) -> torch.Tensor:
    """Exact expected return of a table policy from every (t, prev): J (H+1, n+1), J[H] = 0.

    Backward policy evaluation, J_t(p) = sum_a pi_t(a|p) (R[p, a] + J_{t+1}(a)), EOS continuing with 0.
    """
    horizon, n1, _ = logpi.shape
    if R.shape != (n1, n1):
        raise ValueError(
            f"logpi has shape {tuple(logpi.shape)} but R has {tuple(R.shape)}; "
            "logpi must be (H, n+1, n+1) for the same n"
        )
    pi = logpi.to(torch.float64).exp()  # (H, n+1, n+1)
    J = torch.zeros(horizon + 1, n1, dtype=torch.float64)  # (H+1, n+1)
    for t in range(horizon - 1, -1, -1):
        J[t] = (pi[t] * (R + _continuation(J[t + 1]).unsqueeze(0))).sum(dim=1)
    return J


def table_policy_mean_return(R: torch.Tensor, logpi: torch.Tensor) -> float:
    """Exact expected return of a table policy logpi (H, n+1, n+1) from BOS with the full horizon."""
    return float(policy_values(R, logpi)[0, -1])


def uniform_log_policy(n_tokens: int, horizon: int) -> torch.Tensor:
    """Uniform policy over the n+1 actions at every step, as a (H, n+1, n+1) table."""
    n1 = n_tokens + 1
    return torch.full((horizon, n1, n1), -math.log(n1), dtype=torch.float64)


def expert_log_policy(
    soft_logpi: torch.Tensor, temperature: float = 1.0, epsilon: float = 0.0
) -> torch.Tensor:
    """The demonstrator: pi*(.|s)^(1/tau) renormalised per state, then mixed with uniform at rate eps.

    (Soft value iteration at temperature tau would instead keep log pi = R*/tau - V, whose mode is still
    the best answer; tempering the optimal policy per state does not.) (H, n+1, n+1) float64.
    """
    if not float(temperature) > 0:
        raise ValueError(f"expert.temperature={temperature} must be > 0 (1 = the soft-optimal expert)")
    if not 0.0 <= float(epsilon) <= 1.0:
        raise ValueError(f"expert.epsilon={epsilon} must be in [0, 1] (the chance of a uniform action)")
    logpi = torch.log_softmax(soft_logpi / float(temperature), dim=-1)  # (H, n+1, n+1)
    if epsilon > 0:
        n1 = soft_logpi.shape[-1]
        keep = math.log1p(-epsilon) if epsilon < 1 else -math.inf
        logpi = torch.logaddexp(logpi + keep, torch.full_like(logpi, math.log(epsilon / n1)))
    return logpi


def _as_long(x: IntOrSeq, n: int, default: int, name: str) -> torch.Tensor:
    """A per-episode int vector (n,) from None (the default), an int, or a sequence of n ints."""
    if x is None:
        return torch.full((n,), int(default), dtype=torch.long)
    if isinstance(x, int):
        return torch.full((n,), x, dtype=torch.long)
    out = torch.as_tensor(x, dtype=torch.long).reshape(-1)
    if out.numel() != n:
        raise ValueError(f"{name} has {out.numel()} entries for {n} episodes; pass one per episode or an int")
    return out


class KnownRewardMDP:
    """Hidden-reward token MDP with its exact expert (soft-optimal, or tempered / epsilon-noisy).

    ``seed`` seeds only the reward table; demonstrations use the generator passed to
    :meth:`sample_expert`. Every per-episode method takes ``start`` (the previous-token state the
    episode starts from; default BOS) and ``horizon`` (default H): an int or one per episode.
    """

    def __init__(
        self,
        n_tokens: int = 8,
        horizon: int = 8,
        seed: int = 0,
        temperature: float = 1.0,
        epsilon: float = 0.0,
    ) -> None:
        _check_n_tokens(n_tokens)
        if horizon < 1:
            raise ValueError(f"horizon={horizon} must be >= 1 (max actions per episode, EOS included)")
        self.n_tokens = int(n_tokens)
        self.horizon = int(horizon)
        self.seed = int(seed)
        self.temperature, self.epsilon = float(temperature), float(epsilon)
        self.eos = self.n_tokens  # action id and column index of EOS
        self.bos = self.n_tokens  # row index of the empty-prefix start state
        self.R: torch.Tensor = sample_reward_table(self.n_tokens, self.seed)  # (n+1, n+1)
        self._V, self._soft_logpi = soft_value_iteration(self.R, self.horizon)
        self._logpi = expert_log_policy(self._soft_logpi, self.temperature, self.epsilon)  # (H, n+1, n+1)
        self._best = hard_value_iteration(self.R, self.horizon)  # (H+1, n+1)
        self._worst = -hard_value_iteration(-self.R, self.horizon)  # (H+1, n+1)
        self._expert_J = policy_values(self.R, self._logpi)  # (H+1, n+1)
        self._uniform_J = policy_values(self.R, uniform_log_policy(self.n_tokens, self.horizon))

    @property
    def soft_optimal(self) -> bool:
        """True when the expert is pi* itself (so log pi(y) = R*(y) - V holds)."""
        return self.temperature == 1.0 and self.epsilon == 0.0

    def describe(self) -> dict:
        return {"reward_seed": self.seed, "temperature": self.temperature, "epsilon": self.epsilon,
                "soft_optimal": self.soft_optimal}  # fmt: skip

    def soft_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """V (H+1, n+1) and the expert log-policy logpi (H, n+1, n+1) = [t, prev, action]."""
        return self._V.clone(), self._logpi.clone()

    def _at(self, table: torch.Tensor, start: int | None, horizon: int | None) -> float:
        """table[t, p] for an episode from ``start`` with ``horizon`` steps: t = H - horizon."""
        s = self.bos if start is None else int(start)
        h = self.horizon if horizon is None else int(horizon)
        self._check_start_horizon(s, h)
        return float(table[self.horizon - h, s])

    def _check_start_horizon(self, start: int, horizon: int) -> None:
        if not 0 <= start <= self.bos:
            raise ValueError(
                f"start={start} is outside 0..{self.bos} (symbols 0..{self.n_tokens - 1}, BOS={self.bos})"
            )
        if not 1 <= horizon <= self.horizon:
            raise ValueError(f"horizon={horizon} is outside 1..{self.horizon} (the MDP's longest episode)")

    def V0(self, start: int | None = None, horizon: int | None = None) -> float:
        """Soft value of the start state, V(start, h): the log-partition of pi* there."""
        return self._at(self._V, start, horizon)

    def best_return(self, start: int | None = None, horizon: int | None = None) -> float:
        """Max true return over all complete episodes (hard-max DP)."""
        return self._at(self._best, start, horizon)

    def worst_return(self, start: int | None = None, horizon: int | None = None) -> float:
        """Min true return over all complete episodes: what a malformed answer scores (strict)."""
        return self._at(self._worst, start, horizon)

    def expert_mean_return(self, start: int | None = None, horizon: int | None = None) -> float:
        """Exact E_{y ~ expert}[R*(y)]."""
        return self._at(self._expert_J, start, horizon)

    def uniform_mean_return(self, start: int | None = None, horizon: int | None = None) -> float:
        """Exact expected true return of the uniform policy."""
        return self._at(self._uniform_J, start, horizon)

    def _pad(
        self, seqs: Sequence[Sequence[int]], start: IntOrSeq = None, horizon: IntOrSeq = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prev, action, mask, t) each (N, H); rejects ids out of range, early EOS and > h actions."""
        N, H = len(seqs), self.horizon
        starts, hs = _as_long(start, N, self.bos, "start"), _as_long(horizon, N, H, "horizon")
        action = torch.full((N, H), self.eos, dtype=torch.long)  # (N, H)
        mask = torch.zeros(N, H, dtype=torch.bool)  # (N, H)
        for i, seq in enumerate(seqs):
            seq = [int(x) for x in seq]
            self._check_start_horizon(int(starts[i]), int(hs[i]))
            if len(seq) > hs[i]:
                raise ValueError(
                    f"sequence {i} has {len(seq)} actions > horizon {int(hs[i])}; truncate it to the horizon "
                    "(see episode_from_text) or build the MDP with a larger horizon"
                )
            if any(not 0 <= x <= self.eos for x in seq):
                raise ValueError(f"sequence {i} = {seq} has ids outside 0..{self.eos} (EOS={self.eos})")
            if self.eos in seq[:-1]:
                raise ValueError(f"sequence {i} = {seq} has EOS before its end; cut it after the first EOS")
            if seq:
                action[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[i, : len(seq)] = True
        prev = torch.cat([starts.unsqueeze(1), action[:, :-1]], dim=1)  # (N, H)
        t = ((H - hs).unsqueeze(1) + torch.arange(H)).clamp(max=H - 1)  # (N, H); masked past h
        return prev, action, mask, t

    def true_return(
        self, seqs: Sequence[Sequence[int]], start: IntOrSeq = None, horizon: IntOrSeq = None
    ) -> torch.Tensor:
        """(N,) float64 sum of r*(prev, next) from the start state; an unfinished prefix earns no EOS reward."""
        prev, action, mask, _ = self._pad(seqs, start, horizon)
        return (self.R[prev, action] * mask).sum(dim=1)  # (N, H) summed over H

    def expert_logprob(
        self, seqs: Sequence[Sequence[int]], start: IntOrSeq = None, horizon: IntOrSeq = None
    ) -> torch.Tensor:
        """(N,) float64 log pi(y) under the expert (of the prefix, if y is unfinished)."""
        prev, action, mask, t = self._pad(seqs, start, horizon)
        return (self._logpi[t, prev, action] * mask).sum(dim=1)  # (N, H) summed over H

    def uniform_logprob(
        self, seqs: Sequence[Sequence[int]], start: IntOrSeq = None, horizon: IntOrSeq = None
    ) -> torch.Tensor:
        """(N,) float64 log-probability under the uniform policy: -len(y) log(n+1)."""
        _, _, mask, _ = self._pad(seqs, start, horizon)
        return -mask.sum(dim=1).to(torch.float64) * math.log(self.n_tokens + 1)

    def _sample_table(
        self,
        logpi: torch.Tensor,
        n: int,
        generator: torch.Generator,
        start: IntOrSeq = None,
        horizon: IntOrSeq = None,
    ) -> list[list[int]]:
        """Sample n episodes from a (H, n+1, n+1) table policy; vectorised over the batch."""
        if n < 0:
            raise ValueError(f"n={n} must be >= 0")
        H = self.horizon
        prev, hs = _as_long(start, n, self.bos, "start"), _as_long(horizon, n, H, "horizon")
        for s, h in {(int(a), int(b)) for a, b in zip(prev.tolist(), hs.tolist())}:
            self._check_start_horizon(s, h)
        probs = logpi.exp()  # (H, n+1, n+1)
        alive = torch.ones(n, dtype=torch.bool)  # (n,)
        actions = torch.full((n, H), -1, dtype=torch.long)  # (n, H); -1 = not taken
        for step in range(H):
            alive = alive & (hs > step)  # an episode of horizon h takes at most h actions
            if n == 0 or not alive.any():
                break
            t = (H - hs + step).clamp(max=H - 1)  # (n,)
            a = torch.multinomial(probs[t, prev], 1, generator=generator).squeeze(1)  # (n,)
            actions[:, step] = torch.where(alive, a, torch.full_like(a, -1))
            alive = alive & (a != self.eos)
            prev = torch.where(alive, a, prev)
        return [[x for x in row if x >= 0] for row in actions.tolist()]

    def sample_expert(
        self, n: int, generator: torch.Generator, start: IntOrSeq = None, horizon: IntOrSeq = None
    ) -> list[list[int]]:
        """n episodes from the expert; each ends with EOS unless truncated at its horizon."""
        return self._sample_table(self._logpi, n, generator, start, horizon)

    def sample_uniform(
        self, n: int, generator: torch.Generator, start: IntOrSeq = None, horizon: IntOrSeq = None
    ) -> list[list[int]]:
        """n episodes from the uniform policy (truncated at the horizon)."""
        return self._sample_table(
            uniform_log_policy(self.n_tokens, self.horizon), n, generator, start, horizon
        )

    def episode_from_text(self, text: str, horizon: int | None = None) -> list[int] | None:
        """A finished generation as an episode, or None if malformed.

        The text has no EOS: fewer than h symbols means it ended with EOS; h or more is truncated at h.
        """
        h = self.horizon if horizon is None else int(horizon)
        ids = from_text(text, self.n_tokens)
        if ids is None:
            return None
        return ids[:h] if len(ids) >= h else ids + [self.eos]

    def score_texts(
        self, texts: Sequence[str], start: IntOrSeq = None, horizon: IntOrSeq = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ground-truth verifier: true returns (N,) float64 and validity (N,) bool. A malformed answer
        scores the worst possible return from its start, so it is never dropped from a mean (strict)."""
        N = len(texts)
        starts, hs = _as_long(start, N, self.bos, "start"), _as_long(horizon, N, self.horizon, "horizon")
        eps = [self.episode_from_text(t, int(h)) for t, h in zip(texts, hs.tolist())]
        valid = torch.tensor([e is not None for e in eps], dtype=torch.bool)
        ret = self._worst[self.horizon - hs, starts].clone()  # (N,) the strict penalty per episode
        if valid.any():
            good = [e for e in eps if e is not None]
            ret[valid] = self.true_return(good, starts[valid], hs[valid])
        return ret, valid


# ---- the prompt space: (reward table, start state, horizon) ------------------------------------------


class Prompt(tuple):
    """One prompt of the benchmark: (table index, start state id, horizon)."""

    __slots__ = ()

    def __new__(cls, table: int, start: int, horizon: int):
        return super().__new__(cls, (int(table), int(start), int(horizon)))

    table = property(lambda self: self[0])
    start = property(lambda self: self[1])
    horizon = property(lambda self: self[2])


def parse_starts(starts, n_tokens: int) -> list[int]:
    """Start-state ids from ``"all"`` (every symbol, then BOS), ``"bos"``, or a list of symbols (``"^"`` = BOS)."""
    syms = symbols(n_tokens)
    if isinstance(starts, str) and starts in ("all", "bos"):
        return [*range(n_tokens), n_tokens] if starts == "all" else [n_tokens]
    if isinstance(starts, str) or not starts:
        raise ValueError(
            f"data.starts={starts!r}: use all, bos, or a non-empty list of symbols from {syms} and "
            f"{BOS_SYMBOL!r} (BOS)"
        )
    lookup = {**{s: i for i, s in enumerate(syms)}, BOS_SYMBOL: n_tokens}
    bad = [s for s in starts if str(s) not in lookup]
    if bad:
        raise ValueError(
            f"data.starts has unknown symbols {bad}; use symbols from {syms} or {BOS_SYMBOL!r} (BOS)"
        )
    return sorted({lookup[str(s)] for s in starts})


class PromptSpace:
    """Every prompt ``(table, start, horizon)`` and its text: only the fields that vary are written,
    so the single-prompt space (one table, BOS, one horizon) renders the empty prompt of the original
    benchmark. Text tokens: ``T<k>`` (table k), a symbol or ``^`` (start), ``h<h>`` (horizon)."""

    def __init__(self, n_tables: int, starts: Sequence[int], horizons: Sequence[int], n_tokens: int) -> None:
        if n_tables < 1 or not starts or not horizons:
            raise ValueError("a prompt space needs >= 1 table, start and horizon")
        self.n_tables, self.starts, self.horizons, self.n_tokens = (
            n_tables,
            list(starts),
            list(horizons),
            n_tokens,
        )
        self.prompts = [Prompt(m, s, h) for m in range(n_tables) for s in self.starts for h in self.horizons]
        self._by_text = {self.text(p): p for p in self.prompts}

    def text(self, p: Prompt) -> str:
        parts = []
        if self.n_tables > 1:
            parts.append(f"T{p.table}")
        if len(self.starts) > 1:
            parts.append(BOS_SYMBOL if p.start == self.n_tokens else symbols(self.n_tokens)[p.start])
        if len(self.horizons) > 1:
            parts.append(f"h{p.horizon}")
        return " ".join(parts)

    def parse(self, text: str) -> Prompt:
        try:
            return self._by_text[text]
        except KeyError:
            raise ValueError(
                f"prompt {text!r} is not in this known_reward prompt space ({len(self.prompts)} prompts, e.g. "
                f"{next(iter(self._by_text))!r}); score answers to the task's own rows"
            ) from None

    def vocabulary(self) -> list[str]:
        """The prompt words the symbol tokenizer needs beyond the symbols."""
        words = [f"T{m}" for m in range(self.n_tables)] if self.n_tables > 1 else []
        if len(self.starts) > 1 and self.n_tokens in self.starts:
            words.append(BOS_SYMBOL)
        return words + ([f"h{h}" for h in self.horizons] if len(self.horizons) > 1 else [])


def assign_prompts(
    prompts: Sequence[Prompt], seed: int, fractions: Mapping[str, float] | None = None
) -> tuple[dict[str, list[Prompt]], str]:
    """Pairwise-disjoint rl / val / eval prompt sets, and how they were drawn.

    ``by start``: when every start state has >= 3 prompts (tables x horizons), each start's prompts are
    shuffled and dealt val, eval, then rl, so every split covers every start with different
    (table, horizon) pairs. ``by prompt``: otherwise, with >= 3 prompts, the shuffled prompts are dealt
    the same way. ``shared``: fewer than 3 prompts (the original single-prompt benchmark), every split
    uses every prompt. val and eval get ``round(n * fraction)`` prompts each, at least 1; rl the rest.
    """
    fr = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    if set(fr) != set(HELD_OUT) or any(not 0 < float(v) < 1 for v in fr.values()):
        raise ValueError(f"data.split_fractions={fr}: give rl, val and eval, each in (0, 1)")
    prompts = list(prompts)
    by_start: dict[int, list[Prompt]] = {}
    for p in prompts:
        by_start.setdefault(p.start, []).append(p)
    if len(prompts) < 3:
        return {s: list(prompts) for s in HELD_OUT}, "shared"
    rule = "by start" if min(len(g) for g in by_start.values()) >= 3 else "by prompt"
    groups = list(by_start.values()) if rule == "by start" else [prompts]
    rng = torch.Generator().manual_seed(int(seed) * 7919 + 17)
    out: dict[str, list[Prompt]] = {s: [] for s in HELD_OUT}
    for group in groups:
        order = [group[i] for i in torch.randperm(len(group), generator=rng).tolist()]
        n_val = max(1, round(len(group) * float(fr["val"])))
        n_eval = max(1, round(len(group) * float(fr["eval"])))
        if n_val + n_eval >= len(group):
            raise ValueError(
                f"data.split_fractions={fr} leave no rl prompt in a group of {len(group)}; lower val/eval"
            )
        out["val"] += order[:n_val]
        out["eval"] += order[n_val : n_val + n_eval]
        out["rl"] += order[n_val + n_eval :]
    return {k: sorted(v) for k, v in out.items()}, rule


def cycle_prompts(prompts: Sequence[Prompt], n: int, seed: int) -> list[Prompt]:
    """n rows over the prompts, each prompt floor(n/k) or ceil(n/k) times, in a seeded order."""
    if not prompts:
        raise ValueError("cycle_prompts needs at least one prompt")
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(int(seed))).tolist()
    return [prompts[order[i % len(prompts)]] for i in range(n)]


def sample_rows(
    mdps: Sequence[KnownRewardMDP], space: PromptSpace, prompts: Sequence[Prompt], generator: torch.Generator
) -> list[dict]:
    """One expert demonstration per prompt (in order) as framework rows; tables sampled in order."""
    n_tokens = space.n_tokens
    rows: list[dict | None] = [None] * len(prompts)
    for m, mdp in enumerate(mdps):
        idx = [i for i, p in enumerate(prompts) if p.table == m]
        if not idx:
            continue
        starts = [prompts[i].start for i in idx]
        hs = [prompts[i].horizon for i in idx]
        seqs = mdp.sample_expert(len(idx), generator, starts, hs)
        returns = mdp.true_return(seqs, starts, hs).tolist()
        for i, s, r in zip(idx, seqs, returns):
            p = prompts[i]
            meta = {"tokens": s, "true_return": r, "reward_seed": mdp.seed, "table": p.table, "start": p.start,
                    "horizon": p.horizon}  # fmt: skip
            rows[i] = {
                "family": FAMILY,
                "prompt": space.text(p),
                "response": to_text(s, n_tokens),
                "meta": meta,
            }
    return rows  # type: ignore[return-value]


class Benchmark:
    """The broadened benchmark: reward tables (one per reward seed), a prompt space, the expert, and the
    disjoint held-out prompt sets. The defaults are the original benchmark (one table, start BOS,
    horizon H: one empty prompt shared by every split).

    ``sft`` demonstrates every prompt of the space (the expert is one policy defined everywhere); ``rl``,
    ``val`` and ``eval`` get disjoint prompt sets (:func:`assign_prompts`).
    """

    def __init__(
        self,
        seed: int = 0,
        reward_seed: int | Sequence[int] = 0,
        n_tokens: int = 8,
        horizon: int = 8,
        *,
        starts="bos",
        min_horizon: int | None = None,
        temperature: float = 1.0,
        epsilon: float = 0.0,
        fractions: Mapping[str, float] | None = None,
    ) -> None:
        self.seed = int(seed)
        seeds = [int(reward_seed)] if isinstance(reward_seed, int) else [int(s) for s in reward_seed]
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"data.reward_seed={reward_seed}: give an int or a list of distinct ints")
        self.mdps = [
            KnownRewardMDP(n_tokens, horizon, seed=s, temperature=temperature, epsilon=epsilon) for s in seeds
        ]
        lo = horizon if min_horizon is None else int(min_horizon)
        if not 1 <= lo <= horizon:
            raise ValueError(f"data.min_horizon={min_horizon} must be in 1..horizon={horizon}")
        self.space = PromptSpace(len(seeds), parse_starts(starts, n_tokens), range(lo, horizon + 1), n_tokens)
        self.held, self.rule = assign_prompts(self.space.prompts, self.seed, fractions)

    def rows(self, split: str, n: int, seed_offset: int = 0) -> list[dict]:
        """n expert demonstrations over the split's prompts (``sft``: every prompt), seeded by split."""
        idx = SPLITS.index(split) + seed_offset
        pool = self.space.prompts if split == "sft" else self.held[split]
        prompts = cycle_prompts(pool, int(n), self.seed * 31 + idx)
        gen = torch.Generator().manual_seed(self.seed * 1000003 + idx)
        return sample_rows(self.mdps, self.space, prompts, gen)

    def splits(self, sizes: Mapping[str, int] | None = None) -> dict[str, list[dict]]:
        """Rows for each split in ``sizes``; each split has its own generator, so resizing one split
        leaves the others unchanged."""
        sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
        unknown = set(sizes) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split names {sorted(unknown)}; use a subset of {list(SPLITS)}")
        out = {split: self.rows(split, int(sizes[split])) for split in SPLITS if split in sizes}
        sp = self.space
        logger.info(
            "known_reward splits: %s rows; %d prompts (%d tables x %d starts x %d horizons), rl/val/eval "
            "prompts %s drawn %s; reward seeds %s; expert %s",
            {k: len(v) for k, v in out.items()}, len(sp.prompts), sp.n_tables, len(sp.starts), len(sp.horizons),
            {k: len(v) for k, v in self.held.items()}, self.rule, [m.seed for m in self.mdps], self.expert(),
        )  # fmt: skip
        return out

    def expert(self) -> dict:
        m = self.mdps[0]
        return {"temperature": m.temperature, "epsilon": m.epsilon, "soft_optimal": m.soft_optimal}

    def prompts_of(self, rows: Sequence[dict]) -> list[Prompt]:
        return [self.space.parse(r["prompt"]) for r in rows]

    def score(self, rows: Sequence[dict], texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """True returns (N,) and validity (N,) of answers to ``rows`` (strict: malformed = worst return)."""
        if len(rows) != len(texts):
            raise ValueError(f"{len(rows)} rows but {len(texts)} answers; pass one answer per row")
        prompts = self.prompts_of(rows)
        ret = torch.zeros(len(rows), dtype=torch.float64)
        valid = torch.zeros(len(rows), dtype=torch.bool)
        for m, mdp in enumerate(self.mdps):
            idx = [i for i, p in enumerate(prompts) if p.table == m]
            if idx:
                r, v = mdp.score_texts(
                    [texts[i] for i in idx],
                    [prompts[i].start for i in idx],
                    [prompts[i].horizon for i in idx],
                )
                ret[idx], valid[idx] = r, v
        return ret, valid

    def references(self, rows: Sequence[dict]) -> dict[str, float]:
        """Exact references averaged over ``rows``' prompts: best, expert mean, uniform mean, worst."""
        prompts = self.prompts_of(rows)
        if not prompts:
            return {}
        out = {}
        for key, fn in (("expert", "expert_mean_return"), ("best", "best_return"),
                        ("uniform", "uniform_mean_return"), ("worst", "worst_return")):  # fmt: skip
            vals = [getattr(self.mdps[p.table], fn)(p.start, p.horizon) for p in prompts]
            out[f"{key}_true_return"] = float(sum(vals) / len(vals))
        return out

    def describe(self) -> dict:
        sp = self.space
        return {
            "reward_seeds": [m.seed for m in self.mdps],
            "expert": self.expert(),
            "prompt_space": {
                "tables": sp.n_tables,
                "starts": len(sp.starts),
                "horizons": list(sp.horizons),
                "prompts": len(sp.prompts),
            },  # fmt: skip
            "held_out_prompts": {k: len(v) for k, v in self.held.items()},
            "split_rule": self.rule,
            "sft_prompts": "all",
        }


def make_splits(
    seed: int,
    sizes: Mapping[str, int] | None = None,
    reward_seed: int | Sequence[int] = 0,
    n_tokens: int = 8,
    horizon: int = 8,
    **options,
) -> dict[str, list[dict]]:
    """Expert demonstrations as framework rows for splits sft/rl/val/eval (see :class:`Benchmark`)."""
    return Benchmark(seed, reward_seed, n_tokens, horizon, **options).splits(sizes)
