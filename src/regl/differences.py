"""A − B between two sets of runs, with the standard error of the difference (``regl report``'s tables of the
grids file's ``differences``).

Two runs at the same seed share the model's initialization and the clients' sampling (``train.seed``; the batch
order too where their local sets are the same size), so where both sides have runs at two or more common seeds the
difference is taken seed by seed: mean of d = a − b, standard error sd(d) / √n (paired). Otherwise the unpaired
(Welch) error √(s_a²/n_a + s_b²/n_b), which needs two runs on each side.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Difference:
    mean: float  # a − b, fraction
    se: float | None  # its standard error; None with too few runs to estimate it
    n: int  # seeds (paired) or the smaller side's runs (unpaired)
    paired: bool

    def text(self) -> str:
        """``+3.8 ± 1.2 (3 seeds, paired: 3.2 SE)`` in points of %."""
        head = f"{100 * self.mean:+.1f}"
        how = f"{self.n} seed{'s' if self.n != 1 else ''}, {'paired' if self.paired else 'unpaired'}"
        if self.se is None:
            return f"{head} ({how}: no error estimate)"
        ratio = f"{abs(self.mean) / self.se:.1f} SE" if self.se > 0 else "no spread"
        return f"{head} ± {100 * self.se:.1f} ({how}: {ratio})"


def difference(at_a: dict[Any, float], at_b: dict[Any, float]) -> Difference | None:
    """a − b from each side's figure by seed; paired where the two share at least two seeds; None without a
    figure a side."""
    if not at_a or not at_b:
        return None
    common = [s for s in at_a if s in at_b]
    if len(common) >= 2:
        d = [at_a[s] - at_b[s] for s in common]
        return Difference(statistics.fmean(d), statistics.stdev(d) / math.sqrt(len(d)), len(d), True)
    va, vb = list(at_a.values()), list(at_b.values())
    mean = statistics.fmean(va) - statistics.fmean(vb)
    if len(va) < 2 or len(vb) < 2:
        return Difference(mean, None, min(len(va), len(vb)), False)
    se = math.sqrt(statistics.variance(va) / len(va) + statistics.variance(vb) / len(vb))
    return Difference(mean, se, min(len(va), len(vb)), False)
