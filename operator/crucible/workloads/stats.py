"""The statistics of an evaluation: per-round accuracy summarised as mean and sample
standard deviation; a bootstrap interval over questions; Welch's t-test between rounds of two
models, and paired tests over questions (McNemar's, or a paired t-test); Bradley-Terry ratings
from pairwise judgements, by maximum likelihood, with bootstrap intervals."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

ELO_SCALE = 400 / math.log(10)  # ratings on the familiar Elo-like scale, mean 1000
ELO_MEAN = 1000.0


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    stddev: float  # sample standard deviation (n - 1)
    ci95_low: float
    ci95_high: float


def summarize(values: Sequence[float]) -> Summary:
    n = len(values)
    if n == 0:
        raise ValueError("no rounds to summarise")
    mean = sum(values) / n
    if n == 1:
        return Summary(1, mean, 0.0, mean, mean)
    stddev = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(scipy_stats.t.ppf(0.975, n - 1)) * stddev / math.sqrt(n)
    return Summary(n, mean, stddev, mean - half, mean + half)


@dataclass(frozen=True)
class Welch:
    t: float
    df: float
    p_value: float


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> Welch:
    """Two-sided Welch's t-test of mean(a) == mean(b) with unequal variances."""
    sa, sb = summarize(a), summarize(b)
    va, vb = sa.stddev**2 / sa.n, sb.stddev**2 / sb.n
    if va + vb == 0:
        same = sa.mean == sb.mean
        return Welch(
            0.0 if same else math.copysign(math.inf, sa.mean - sb.mean),
            float(sa.n + sb.n - 2),
            1.0 if same else 0.0,
        )
    t = (sa.mean - sb.mean) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (sa.n - 1) + vb**2 / (sb.n - 1))
    return Welch(t, df, float(2 * scipy_stats.t.sf(abs(t), df)))


QUESTION_RESAMPLES = 10000


def bootstrap_interval(
    scores: Sequence[float], seed: int, resamples: int = QUESTION_RESAMPLES
) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean of per-question scores: questions are
    resampled with replacement, which is the uncertainty of having only these questions."""
    values = np.asarray(scores, dtype=float)
    if values.size == 0:
        raise ValueError("no questions to resample")
    picks = np.random.default_rng(seed).integers(0, values.size, (resamples, values.size))
    low, high = np.percentile(values[picks].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


@dataclass(frozen=True)
class Paired:
    difference: float  # mean of a minus mean of b
    ci95_low: float
    ci95_high: float
    test: str  # "McNemar" or "PairedT"
    p_value: float


def paired_test(a: Sequence[float], b: Sequence[float], seed: int) -> Paired:
    """Two results on the same questions (per-question scores in [0, 1], in question order).
    Right-or-wrong scores get McNemar's exact test: only the questions one got right and the
    other wrong say anything, and under "no difference" either way is a fair coin. Scores
    averaged over rounds get a paired t-test over questions. Either way, a paired bootstrap
    interval of the difference."""
    if len(a) != len(b) or not a:
        raise ValueError("paired results need the same, non-empty, questions")
    differences = [x - y for x, y in zip(a, b, strict=True)]
    low, high = bootstrap_interval(differences, seed)
    mean = sum(differences) / len(differences)
    if all(x in (0.0, 1.0) for x in (*a, *b)):
        only_a = sum(d > 0 for d in differences)
        discordant = only_a + sum(d < 0 for d in differences)
        p_value = (
            float(scipy_stats.binomtest(only_a, discordant, 0.5).pvalue) if discordant else 1.0
        )
        return Paired(mean, low, high, "McNemar", p_value)
    if all(d == differences[0] for d in differences):  # no spread: t is undefined
        return Paired(mean, low, high, "PairedT", 1.0 if mean == 0 else 0.0)
    p_value = float(scipy_stats.ttest_rel(a, b).pvalue)
    return Paired(mean, low, high, "PairedT", p_value)


# -- Bradley-Terry ---------------------------------------------------------------------------

# One judgement: (model i, model j, score of i) with 1 a win of i, 0 a win of j, 0.5 a tie.
Judgement = tuple[str, str, float]


def mle_exists(judgements: Sequence[Judgement]) -> bool:
    """Whether the Bradley-Terry maximum-likelihood estimate exists (Zermelo; Ford 1957):
    however the models are split in two, each side has won (or tied) against the other at
    least once, i.e. the "has beaten" graph is strongly connected. It fails, for instance,
    when some model never wins or never loses."""
    beaten: dict[str, set[str]] = {}
    beaten_by: dict[str, set[str]] = {}
    for i, j, score in judgements:
        for winner, loser, won in ((i, j, score > 0), (j, i, score < 1)):
            beaten.setdefault(winner, set())
            beaten_by.setdefault(loser, set())
            if won:
                beaten[winner].add(loser)
                beaten_by[loser].add(winner)
    models = set(beaten) | set(beaten_by)

    def reach(edges: dict[str, set[str]]) -> set[str]:
        start = next(iter(models))
        seen, frontier = {start}, [start]
        while frontier:
            for other in edges.get(frontier.pop(), ()):
                if other not in seen:
                    seen.add(other)
                    frontier.append(other)
        return seen

    return not models or (reach(beaten) == models and reach(beaten_by) == models)


# Where no maximum-likelihood estimate exists, this weak prior (a fraction of a win against a
# virtual average opponent) keeps every rating finite.
PRIOR = 0.01


def bradley_terry(
    judgements: Sequence[Judgement], iterations: int = 10000, tolerance: float = 1e-12
) -> dict[str, float]:
    """Strengths by Hunter's MM algorithm (ties count half a win each): the exact maximum-
    likelihood estimate whenever it exists (`mle_exists`), else with the weak PRIOR.
    Returns Elo-like ratings: 400·log10(strength), centred on 1000."""
    models = sorted({m for i, j, _ in judgements for m in (i, j)})
    wins = dict.fromkeys(models, 0.0)
    games: dict[tuple[str, str], float] = {}
    for i, j, score in judgements:
        wins[i] += score
        wins[j] += 1 - score
        key = (min(i, j), max(i, j))
        games[key] = games.get(key, 0.0) + 1
    prior = 0.0 if mle_exists(judgements) else PRIOR
    strength = dict.fromkeys(models, 1.0)
    for _ in range(iterations):
        updated = {}
        for m in models:
            denominator = sum(
                n / (strength[a] + strength[b]) for (a, b), n in games.items() if m in (a, b)
            )
            updated[m] = (wins[m] + prior) / (denominator + 2 * prior / (strength[m] + 1))
        scale = math.exp(sum(math.log(v) for v in updated.values()) / len(models))
        updated = {m: v / scale for m, v in updated.items()}
        if max(abs(updated[m] - strength[m]) for m in models) < tolerance:
            strength = updated
            break
        strength = updated
    return {m: ELO_MEAN + ELO_SCALE * math.log(strength[m]) for m in models}


@dataclass(frozen=True)
class Rating:
    model: str
    rating: float
    ci95_low: float
    ci95_high: float
    regularized: bool  # no maximum-likelihood estimate exists: fitted with the weak prior


def _bootstrap_fits(
    judgements: Sequence[Judgement], bootstrap: int, seed: int
) -> list[dict[str, float]]:
    """Ratings refitted to `bootstrap` resamples of the judgements (with replacement)."""
    rng = random.Random(seed)
    fits = []
    for _ in range(bootstrap):
        resampled = [judgements[rng.randrange(len(judgements))] for _ in judgements]
        fits.append(bradley_terry(resampled, iterations=200, tolerance=1e-6))
    return fits


def _percentiles(values: list[float], point: float) -> tuple[float, float]:
    """The percentile bootstrap 95% interval; the point itself without resamples."""
    ordered = sorted(values) or [point]
    return ordered[int(0.025 * (len(ordered) - 1))], ordered[math.ceil(0.975 * (len(ordered) - 1))]


def rate(judgements: Sequence[Judgement], bootstrap: int, seed: int = 0) -> list[Rating]:
    """Ratings, best first, each with a percentile bootstrap 95% interval."""
    point = bradley_terry(judgements)
    regularized = not mle_exists(judgements)
    fits = _bootstrap_fits(judgements, bootstrap, seed)
    ratings = []
    for m, value in point.items():
        low, high = _percentiles([fit.get(m, ELO_MEAN) for fit in fits], value)
        ratings.append(Rating(m, value, low, high, regularized))
    return sorted(ratings, key=lambda r: r.rating, reverse=True)


@dataclass(frozen=True)
class Lead:
    leader: str
    other: str
    difference: float  # leader's rating minus the other's
    ci95_low: float
    ci95_high: float


def lead(
    judgements: Sequence[Judgement], leader: str, other: str, bootstrap: int, seed: int = 0
) -> Lead:
    """How far `leader` rates above `other`, with a percentile bootstrap 95% interval of the
    difference itself (the two ratings' own intervals overlap more than it does)."""
    point = bradley_terry(judgements)
    difference = point[leader] - point[other]
    low, high = _percentiles(
        [
            fit.get(leader, ELO_MEAN) - fit.get(other, ELO_MEAN)
            for fit in _bootstrap_fits(judgements, bootstrap, seed)
        ],
        difference,
    )
    return Lead(leader, other, difference, low, high)
