"""Known-reward token MDP (`data=known_reward`): the synthetic check of method.md.

Why: on real text the "true" dense reward is unknown. Here it is a hidden table
``r*(prev, next) ~ N(0, 1)`` and the expert is the *exact* soft-optimal policy for it, so every
quantity the framework estimates has a closed-form answer.

Conventions (n = ``n_tokens``): ids ``0..n-1`` are the symbols ``"A", "B", ...``, id ``n`` is
EOS; ``R`` is ``(n+1, n+1)`` with row = previous token (row ``n`` = BOS, the empty prompt) and
column = next action (column ``n`` = EOS); an episode ends at EOS (earning ``R[prev, EOS]``) or
after ``horizon`` actions (``V_H = 0``); discount 1; the expert is time-dependent ``pi_t(a | p)``.
All maths is float64; ``log pi*(y) = R*(y) - V_0(BOS)`` for every complete episode (method.md
section 2), which the tests assert to 1e-10.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import torch

logger = logging.getLogger(__name__)

FAMILY = "known_reward"
SPLITS: tuple[str, ...] = ("sft", "rl", "val", "eval")
DEFAULT_SIZES: dict[str, int] = {"sft": 2000, "rl": 512, "val": 256, "eval": 512}
_MAX_SYMBOLS = 26  # one capital letter per symbol


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


def table_policy_mean_return(R: torch.Tensor, logpi: torch.Tensor) -> float:
    """Exact expected return of a table policy logpi (H, n+1, n+1): forward occupancy DP."""
    horizon, n1, _ = logpi.shape
    if R.shape != (n1, n1):
        raise ValueError(
            f"logpi has shape {tuple(logpi.shape)} but R has {tuple(R.shape)}; "
            "logpi must be (H, n+1, n+1) for the same n"
        )
    pi = logpi.to(torch.float64).exp()  # (H, n+1, n+1)
    occ = torch.zeros(n1, dtype=torch.float64)  # (n+1,) probability of being alive with prev=p
    occ[-1] = 1.0  # start at BOS
    total = torch.zeros((), dtype=torch.float64)
    for t in range(horizon):
        flow = occ.unsqueeze(1) * pi[t]  # (n+1, n+1) prob of taking (p, a) at t
        total = total + (flow * R).sum()
        occ = flow.sum(dim=0)  # (n+1,) next prev-token occupancy
        occ[-1] = 0.0  # mass that chose EOS is finished
    return float(total)


def uniform_log_policy(n_tokens: int, horizon: int) -> torch.Tensor:
    """Uniform policy over the n+1 actions at every step, as a (H, n+1, n+1) table."""
    n1 = n_tokens + 1
    return torch.full((horizon, n1, n1), -math.log(n1), dtype=torch.float64)


class KnownRewardMDP:
    """Hidden-reward token MDP with its exact soft-optimal expert.

    ``seed`` seeds only the reward table; demonstrations use the generator passed to :meth:`sample_expert`.
    """

    def __init__(self, n_tokens: int = 8, horizon: int = 8, seed: int = 0) -> None:
        _check_n_tokens(n_tokens)
        if horizon < 1:
            raise ValueError(f"horizon={horizon} must be >= 1 (max actions per episode, EOS included)")
        self.n_tokens = int(n_tokens)
        self.horizon = int(horizon)
        self.seed = int(seed)
        self.eos = self.n_tokens  # action id and column index of EOS
        self.bos = self.n_tokens  # row index of the prompt state
        self.R: torch.Tensor = sample_reward_table(self.n_tokens, self.seed)  # (n+1, n+1)
        self._V, self._logpi = soft_value_iteration(self.R, self.horizon)

    def soft_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """V (H+1, n+1) and the expert log-policy logpi (H, n+1, n+1) = [t, prev, action]."""
        return self._V.clone(), self._logpi.clone()

    def V0(self) -> float:
        """Soft value of the start state, V_0(BOS): the log-partition of the expert."""
        return float(self._V[0, self.bos])

    def best_return(self) -> float:
        """Max true return over all complete episodes (hard-max DP)."""
        return float(hard_value_iteration(self.R, self.horizon)[0, self.bos])

    def worst_return(self) -> float:
        """Min true return over all complete episodes: what a malformed answer scores (strict)."""
        return -float(hard_value_iteration(-self.R, self.horizon)[0, self.bos])

    def expert_mean_return(self) -> float:
        """Exact E_{y ~ pi*}[R*(y)]."""
        return table_policy_mean_return(self.R, self._logpi)

    def uniform_mean_return(self) -> float:
        """Exact expected true return of the uniform policy."""
        return table_policy_mean_return(self.R, uniform_log_policy(self.n_tokens, self.horizon))

    def _pad(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prev, action, mask) each (N, H); rejects ids out of range, early EOS and > H actions."""
        N, H = len(seqs), self.horizon
        action = torch.full((N, H), self.eos, dtype=torch.long)  # (N, H)
        mask = torch.zeros(N, H, dtype=torch.bool)  # (N, H)
        for i, seq in enumerate(seqs):
            seq = [int(x) for x in seq]
            if len(seq) > H:
                raise ValueError(
                    f"sequence {i} has {len(seq)} actions > horizon {H}; truncate it to the horizon "
                    "(see episode_from_text) or build the MDP with a larger horizon"
                )
            if any(not 0 <= x <= self.eos for x in seq):
                raise ValueError(f"sequence {i} = {seq} has ids outside 0..{self.eos} (EOS={self.eos})")
            if self.eos in seq[:-1]:
                raise ValueError(f"sequence {i} = {seq} has EOS before its end; cut it after the first EOS")
            if seq:
                action[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[i, : len(seq)] = True
        prev = torch.cat([torch.full((N, 1), self.bos, dtype=torch.long), action[:, :-1]], dim=1)  # (N, H)
        return prev, action, mask

    def true_return(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """(N,) float64 sum of r*(prev, next) from BOS; an unfinished prefix earns no EOS reward."""
        prev, action, mask = self._pad(seqs)
        return (self.R[prev, action] * mask).sum(dim=1)  # (N, H) summed over H

    def expert_logprob(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """(N,) float64 log pi*(y) (of the prefix, if y is unfinished)."""
        prev, action, mask = self._pad(seqs)
        t = torch.arange(self.horizon).expand_as(prev)  # (N, H)
        return (self._logpi[t, prev, action] * mask).sum(dim=1)  # (N, H) summed over H

    def uniform_logprob(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """(N,) float64 log-probability under the uniform policy: -len(y) log(n+1)."""
        _, _, mask = self._pad(seqs)
        return -mask.sum(dim=1).to(torch.float64) * math.log(self.n_tokens + 1)

    def _sample_table(self, logpi: torch.Tensor, n: int, generator: torch.Generator) -> list[list[int]]:
        """Sample n episodes from a (H, n+1, n+1) table policy; vectorised over the batch."""
        if n < 0:
            raise ValueError(f"n={n} must be >= 0")
        probs = logpi.exp()  # (H, n+1, n+1)
        prev = torch.full((n,), self.bos, dtype=torch.long)  # (n,)
        alive = torch.ones(n, dtype=torch.bool)  # (n,)
        actions = torch.full((n, self.horizon), -1, dtype=torch.long)  # (n, H); -1 = not taken
        for t in range(self.horizon):
            if n == 0 or not alive.any():
                break
            a = torch.multinomial(probs[t, prev], 1, generator=generator).squeeze(1)  # (n,)
            actions[:, t] = torch.where(alive, a, torch.full_like(a, -1))
            alive = alive & (a != self.eos)
            prev = torch.where(alive, a, prev)
        return [[x for x in row if x >= 0] for row in actions.tolist()]

    def sample_expert(self, n: int, generator: torch.Generator) -> list[list[int]]:
        """n episodes from pi*; each ends with EOS unless truncated at H actions."""
        return self._sample_table(self._logpi, n, generator)

    def sample_uniform(self, n: int, generator: torch.Generator) -> list[list[int]]:
        """n episodes from the uniform policy (truncated at H)."""
        return self._sample_table(uniform_log_policy(self.n_tokens, self.horizon), n, generator)

    def episode_from_text(self, text: str) -> list[int] | None:
        """A finished generation as an episode, or None if malformed.

        The text has no EOS: fewer than H symbols means it ended with EOS; H or more is truncated at H.
        """
        ids = from_text(text, self.n_tokens)
        if ids is None:
            return None
        return ids[: self.horizon] if len(ids) >= self.horizon else ids + [self.eos]

    def score_texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Ground-truth verifier: true returns (N,) float64 and validity (N,) bool. A malformed answer
        scores the worst possible return, so it is never dropped from a mean (strict evaluation)."""
        eps = [self.episode_from_text(t) for t in texts]
        valid = torch.tensor([e is not None for e in eps], dtype=torch.bool)
        ret = torch.full((len(texts),), self.worst_return(), dtype=torch.float64)
        good = [e for e in eps if e is not None]
        if good:
            ret[valid] = self.true_return(good)
        return ret, valid


def make_splits(
    seed: int,
    sizes: Mapping[str, int] | None = None,
    reward_seed: int = 0,
    n_tokens: int = 8,
    horizon: int = 8,
) -> dict[str, list[dict]]:
    """Expert demonstrations as framework rows for splits sft/rl/val/eval.

    Every prompt is empty (BOS), so splits differ only in their sampled responses and evaluation
    is by the true return. Each split has its own generator seeded from (seed, split index), so
    resizing one split leaves the others unchanged. ``reward_seed`` picks the hidden reward table.
    """
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split names {sorted(unknown)}; use a subset of {list(SPLITS)}")
    mdp = KnownRewardMDP(n_tokens=n_tokens, horizon=horizon, seed=reward_seed)
    out: dict[str, list[dict]] = {}
    for idx, split in enumerate(SPLITS):
        if split not in sizes:
            continue
        gen = torch.Generator().manual_seed(int(seed) * 1000003 + idx)
        seqs = mdp.sample_expert(int(sizes[split]), gen)
        returns = mdp.true_return(seqs).tolist() if seqs else []
        out[split] = [
            {
                "family": FAMILY,
                "prompt": "",
                "response": to_text(s, n_tokens),
                "meta": {"tokens": s, "true_return": r, "reward_seed": int(reward_seed)},
            }
            for s, r in zip(seqs, returns)
        ]
    sizes_out = {k: len(v) for k, v in out.items()}
    logger.info("known_reward splits: %s (reward_seed=%d, V0=%.4f)", sizes_out, reward_seed, mdp.V0())
    return out
