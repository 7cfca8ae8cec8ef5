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

The benchmark built on this MDP (prompts naming a table, a start state and a horizon; the splits) is
:mod:`densepath.data.known_reward_prompts`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

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

    def _per_episode(self, start: IntOrSeq, horizon: IntOrSeq, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Start states and horizons (n,) each of n episodes; None: BOS and the full horizon."""
        return _as_long(start, n, self.bos, "start"), _as_long(horizon, n, self.horizon, "horizon")

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
        starts, hs = self._per_episode(start, horizon, N)
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
        prev, hs = self._per_episode(start, horizon, n)
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
        starts, hs = self._per_episode(start, horizon, N)
        eps = [self.episode_from_text(t, int(h)) for t, h in zip(texts, hs.tolist())]
        valid = torch.tensor([e is not None for e in eps], dtype=torch.bool)
        ret = self._worst[self.horizon - hs, starts].clone()  # (N,) the strict penalty per episode
        if valid.any():
            good = [e for e in eps if e is not None]
            ret[valid] = self.true_return(good, starts[valid], hs[valid])
        return ret, valid
