"""Which structures to label: three greedy rules over the pretrained model's view.

Every rule works on per-structure descriptors (means over a structure's atoms of the
per-atom descriptors of :mod:`.features`) and starts from what is already covered:
the structures passed with ``--exclude`` (already labelled, or kept for validation)
count as chosen before the first pick.

- ``fps``: farthest-point sampling on the backbone features (each column scaled to
  unit variance over the pool): every pick is the structure farthest from all
  chosen ones. Spreads the labels over the feature space, and so picks whatever
  lies farthest out first (harshly distorted frames, if the pool has them).
- ``uncertainty``: LLPR's view of the energy head. A linear head on the last-layer
  features ``f``, fitted on the chosen structures, predicts a structure with a
  variance proportional to ``f^T (F^T F + λ I)^-1 f`` (``F``: the chosen
  structures' features). Each pick is the structure with the largest such variance,
  i.e. the one the labels chosen so far explain worst. Also drawn to outliers.
- ``mix`` (the default): farthest-point's spread weighted by the pool's density.
  Each pick raises the pool's *coverage* the most: how similar (Gaussian kernel on
  the same backbone features) every pool structure is to its closest chosen one,
  summed over the pool. A structure is worth what it covers, so an isolated
  outlier, which covers only itself, waits until the typical structures are
  covered, while the picks still spread over every region (every molecule) first.

Each pick costs O(pool x features) (``fps``), O(pool x features^2) (``uncertainty``,
rank-one Sherman-Morrison updates) or O(pool x 2000) (``mix``, coverage measured on
a seeded sample of at most 2000 structures): for a pool of 10,000 structures the
forward pass of the model dominates. The same seed gives the same selection; the
seed chooses the first structure of ``fps`` (when nothing is excluded) and the
coverage sample of ``mix`` (pools over 2000 structures).
"""

from typing import Callable, Dict, List

import numpy as np

from .features import AtomDescriptors


#: relative strength of the ridge prior λ of the linear energy head, as a fraction
#: of a typical structure's squared feature norm (features are scaled so that this
#: norm is the number of features): small, so the data decide, but it keeps the
#: first picks and the unexplored directions finite
RIDGE = 1e-2


def structure_means(values: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Mean over each structure's atoms of per-atom ``values`` (atoms, features)."""
    sums = np.zeros((n, values.shape[1]))
    np.add.at(sums, owner, values)
    return sums / np.bincount(owner, minlength=n)[:, None]


def scaled_columns(points: np.ndarray) -> np.ndarray:
    """Each column centred and divided by its standard deviation over ``points``
    (columns that do not vary are left at zero)."""
    spread = points.std(axis=0)
    spread[spread == 0] = 1.0
    return (points - points.mean(axis=0)) / spread


def unit_rms(points: np.ndarray) -> np.ndarray:
    """``points`` scaled so that their mean squared norm is the number of columns
    (LLPR's features are not centred: the energy head sees them as they are)."""
    rms = np.sqrt(np.mean(points**2))
    return points / rms if rms > 0 else points


def farthest_point_sampling(
    points: np.ndarray, covered: np.ndarray, n: int, rng: np.random.Generator
) -> List[int]:
    """Indices of ``n`` rows of ``points``, each farthest from those chosen before
    and from the rows of ``covered`` (already labelled points)."""
    if len(covered):
        gaps = np.min(
            np.linalg.norm(points[:, None, :] - covered[None, :, :], axis=-1), axis=1
        )
        first = int(np.argmax(gaps))
    else:
        gaps = np.full(len(points), np.inf)
        first = int(rng.integers(len(points)))
    chosen = [first]
    gaps = np.minimum(gaps, np.linalg.norm(points - points[first], axis=1))
    for _ in range(n - 1):
        gaps[chosen] = -1.0
        pick = int(np.argmax(gaps))
        chosen.append(pick)
        gaps = np.minimum(gaps, np.linalg.norm(points - points[pick], axis=1))
    return chosen


class LinearHeadPosterior:
    """The inverse ridge matrix ``(F^T F + λ I)^-1`` of a linear head, grown one
    structure at a time (rank-one Sherman-Morrison updates)."""

    def __init__(self, n_features: int, ridge: float):
        self.inverse = np.eye(n_features) / ridge

    def add(self, feature: np.ndarray) -> None:
        projected = self.inverse @ feature
        self.inverse -= np.outer(projected, projected) / (1.0 + feature @ projected)

    def variances(self, features: np.ndarray) -> np.ndarray:
        """``f^T A^-1 f`` for every row ``f`` of ``features``."""
        return np.sum((features @ self.inverse) * features, axis=1)


def _posterior(features: np.ndarray, covered: np.ndarray) -> LinearHeadPosterior:
    posterior = LinearHeadPosterior(features.shape[1], RIDGE * features.shape[1])
    for feature in covered:
        posterior.add(feature)
    return posterior


def max_variance(features: np.ndarray, covered: np.ndarray, n: int) -> List[int]:
    """Greedy: each pick has the largest variance given all picks before it."""
    posterior = _posterior(features, covered)
    chosen: List[int] = []
    available = np.ones(len(features), dtype=bool)
    for _ in range(n):
        scores = np.where(available, posterior.variances(features), -np.inf)
        pick = int(np.argmax(scores))
        chosen.append(pick)
        available[pick] = False
        posterior.add(features[pick])
    return chosen


#: most pool structures the coverage of ``mix`` is measured on (a seeded sample):
#: keeps its memory and time linear in the pool size
COVERAGE_SAMPLE = 2000


def _distances(points: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Euclidean distances between the rows of ``points`` and of ``others``."""
    squared = (
        np.sum(points**2, axis=1)[:, None]
        + np.sum(others**2, axis=1)[None, :]
        - 2.0 * points @ others.T
    )
    return np.sqrt(np.maximum(squared, 0.0))


def kernel_coverage(
    points: np.ndarray, covered: np.ndarray, n: int, rng: np.random.Generator
) -> List[int]:
    """Greedy: each pick of ``points`` raises the coverage the most.

    The coverage of a structure is its largest Gaussian-kernel similarity to any
    chosen or ``covered`` structure; the bandwidth is the median distance of a
    structure to its nearest neighbour. A pick gains the coverage it adds, summed
    over every structure (candidates and covered ones, or a seeded sample of
    :data:`COVERAGE_SAMPLE` of them), so it is worth at most 1 for itself plus what
    it adds to its neighbours: an isolated structure waits until the dense regions
    are covered.
    """
    everything = np.concatenate([points, covered]) if len(covered) else points
    sample = np.arange(len(everything))
    if len(everything) > COVERAGE_SAMPLE:
        sample = np.sort(rng.choice(len(everything), COVERAGE_SAMPLE, replace=False))
    distances = _distances(everything, everything[sample])
    nearest = distances.copy()
    nearest[sample, np.arange(len(sample))] = np.inf
    bandwidth = float(np.median(nearest.min(axis=0)))
    if not np.isfinite(bandwidth) or bandwidth <= 0:
        bandwidth = 1.0  # every structure identical, or a pool of one
    similarity = np.exp(-0.5 * (distances / bandwidth) ** 2)
    coverage = np.zeros(len(sample))
    if len(covered):
        coverage = similarity[len(points) :].max(axis=0)
    similarity = similarity[: len(points)]
    chosen: List[int] = []
    for _ in range(n):
        gain = np.maximum(similarity - coverage[None, :], 0.0).sum(axis=1)
        gain[chosen] = -1.0
        pick = int(np.argmax(gain))
        chosen.append(pick)
        coverage = np.maximum(coverage, similarity[pick])
    return chosen


def _backbone_points(descriptors: AtomDescriptors) -> np.ndarray:
    return scaled_columns(
        structure_means(descriptors.backbone, descriptors.owner, _count(descriptors))
    )


def _fps(descriptors, pool, covered, n, rng):
    points = _backbone_points(descriptors)
    return farthest_point_sampling(points[pool], points[covered], n, rng)


def _llpr_features(descriptors):
    return unit_rms(
        structure_means(descriptors.last_layer, descriptors.owner, _count(descriptors))
    )


def _uncertainty(descriptors, pool, covered, n, rng):
    features = _llpr_features(descriptors)
    return max_variance(features[pool], features[covered], n)


def _mix(descriptors, pool, covered, n, rng):
    points = _backbone_points(descriptors)
    return kernel_coverage(points[pool], points[covered], n, rng)


def _count(descriptors: AtomDescriptors) -> int:
    return descriptors.n_structures


#: the rules, by the name ``--method`` takes; each maps (descriptors of pool and
#: covered structures stacked, pool indices, covered indices, n, rng) to positions
#: in ``pool``
METHODS: Dict[str, Callable] = {"mix": _mix, "fps": _fps, "uncertainty": _uncertainty}


def select(
    descriptors: AtomDescriptors,
    pool: np.ndarray,
    covered: np.ndarray,
    n: int,
    method: str,
    seed: int,
) -> List[int]:
    """The ``n`` structures ``method`` picks among ``pool`` (indices into the
    structures of ``descriptors``), with ``covered`` counted as already chosen.

    :return: indices into the structures of ``descriptors``, in the order picked
    """
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}' (known: {', '.join(METHODS)})")
    if not 0 < n <= len(pool):
        raise ValueError(f"cannot choose {n} structures from a pool of {len(pool)}")
    rng = np.random.default_rng(seed)
    positions = METHODS[method](
        descriptors, np.asarray(pool), np.asarray(covered), n, rng
    )
    return [int(pool[p]) for p in positions]
