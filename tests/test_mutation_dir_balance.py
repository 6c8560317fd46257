"""Hand-computed cases for ``fedsim.data.dir_balance`` (docs/mutation.md): the Sinkhorn iterations
on a triangular matrix (closed form), and largest-remainder rounding's zero-weight, tie and
remainder-order cases."""

from __future__ import annotations

import numpy as np

from fedsim.data.dir_balance import largest_remainder, sinkhorn_rows_cols


def test_sinkhorn_five_iterations_on_a_triangular_matrix() -> None:
    # [[1, 0], [1, 1]]: after t row-then-column passes it is [[2t, 0], [1, 2t + 1]] / (2t + 1)
    # in the first column and 1 in the second (induction); t = 5 gives 10/11 and 1/11. An int
    # matrix must be accepted (converted to float).
    p = sinkhorn_rows_cols(np.array([[1, 0], [1, 1]]))
    assert np.allclose(p, [[10 / 11, 0.0], [1 / 11, 1.0]], rtol=0, atol=1e-15)
    p2 = sinkhorn_rows_cols(np.array([[1.0, 0.0], [1.0, 1.0]]), iterations=2)
    assert np.allclose(p2, [[4 / 5, 0.0], [1 / 5, 1.0]], rtol=0, atol=1e-15)
    # rows and columns summing to less than 1 are scaled up too: one pass on [[0.1, 0.3]]
    one = sinkhorn_rows_cols(np.array([[0.1, 0.3], [0.2, 0.2]]), iterations=1)
    # rows -> [[1/4, 3/4], [1/2, 1/2]]; columns (sums 3/4, 5/4) -> [[1/3, 3/5], [2/3, 2/5]]
    assert np.allclose(one, [[1 / 3, 3 / 5], [2 / 3, 2 / 5]], rtol=0, atol=1e-15)


def test_largest_remainder_zero_weights_split_evenly() -> None:
    # 5 / 3 each: floors 1, the two leftover units to the lowest positions
    assert largest_remainder(5, np.zeros(3)).tolist() == [2, 2, 1]
    assert largest_remainder(6, np.zeros(2)).tolist() == [3, 3]


def test_largest_remainder_goes_by_fraction_not_by_size() -> None:
    # exact [2.2, 0.8]: floors [2, 0], the leftover unit to the larger fraction 0.8
    assert largest_remainder(3, np.array([2.2, 0.8])).tolist() == [2, 1]
    assert largest_remainder(4, np.array([1.0, 1.0, 2.0])).tolist() == [1, 1, 2]


def test_largest_remainder_ties_go_to_the_lower_positions_on_long_inputs() -> None:
    # weights 1, 2 alternating (sum 60), total 30: exact 0.5, 1.0, floors 0, 1, and 10 leftover
    # units tied at fraction 0.5 over the 20 even positions of 40: the first 10 of them get one
    # (numpy's default quicksort would reorder the ties on 40 elements)
    out = largest_remainder(30, np.array([1.0, 2.0] * 20))
    assert out.tolist() == [1, 1] * 10 + [0, 1] * 10
