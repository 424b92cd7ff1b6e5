"""How many clients a Dirichlet split at small beta can give images to, on the embedded default's 12,000
training images (10 classes x 1,200). Prints, per number of clients, the draws in which every client got
`partition.min_size` = 10 images and the most clients that got them in one draw (docs/experiments.md,
"Many clients at β = 0.01").

    python bench/archive/dirichlet_reach.py
"""

import numpy as np

from regl.data.partition import dirichlet

LABELS = np.repeat(np.arange(10), 1200)
for clients, draws, seed in ((20, 20000, 1), (50, 2000, 2), (100, 1000, 2)):
    rng = np.random.default_rng(seed)
    full = most = 0
    for _ in range(draws):
        # min_size 0 and one try: one raw draw of the split, counted here instead of redrawn
        sizes = np.array([len(i) for i in dirichlet(LABELS, clients, 0.01, 0, 1, rng, 10).indices])
        full += bool((sizes >= 10).all())
        most = max(most, int((sizes >= 10).sum()))
    print(f"M = {clients}: {full} of {draws} draws give every client 10 images; at most {most} clients in one draw")
