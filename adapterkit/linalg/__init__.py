"""Linear algebra for low-rank surgery: exact SVDs of sums of low-rank products (never
forming the dense matrix), dense and randomized SVDs, and choosing a rank.

Everything here works on plain 2-D matrices; mapping adapter modules (linear, embedding,
convolution layouts, scaling) onto them is the operations' business (``adapterkit.ops``).
"""

from .rank import energy_kept, select_rank
from .svd import LowRankSVD, dense_svd, factored_svd, randomized_svd

__all__ = ["LowRankSVD", "dense_svd", "energy_kept", "factored_svd", "randomized_svd", "select_rank"]
