import numpy as np

from data.actions import action_chunks, binarize_gripper, normalize, rel2abs_gripper, unnormalize
from data.statistics import dataset_statistics, unnorm_key


def test_binarize_takes_the_next_settled_value():
    g = np.array([1.0, 1.0, 0.5, 0.0, 0.0, 0.7, 1.0, 0.3])
    np.testing.assert_allclose(binarize_gripper(g), [1, 1, 0, 0, 0, 1, 1, 0.3])  # a trailing unsettled value is kept


def test_rel2abs_holds_state_between_commands():
    rel = np.array([0.0, 0.0, 1.0, 0.0, 0.0, -1.0, 0.0])  # close at 2, open at 5
    np.testing.assert_array_equal(rel2abs_gripper(rel), [1, 1, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(rel2abs_gripper(np.array([0.0, -1.0, 0.0])), [0, 1, 1])  # first command opens: starts closed
    np.testing.assert_array_equal(rel2abs_gripper(np.zeros(3)), [1, 1, 1])


def test_normalize_round_trip_and_mask():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 7)).astype(np.float32)
    a[:, 6] = rng.integers(0, 2, 500)
    a[:, 2] = 0.3  # constant dim
    stats = dataset_statistics(a, a[:, :7], 10)["action"]
    n = normalize(a, stats)
    assert n[:, :6].min() >= -1 and n[:, :6].max() <= 1
    assert np.all(n[:, 2] == 0)  # q01 == q99 → 0
    np.testing.assert_array_equal(n[:, 6], a[:, 6])  # gripper not normalised
    inside = (a[:, 0] > stats["q01"][0]) & (a[:, 0] < stats["q99"][0])
    np.testing.assert_allclose(unnormalize(n, stats)[inside, 0], a[inside, 0], atol=1e-5)


def test_chunks_repeat_the_last_action():
    a = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    c = action_chunks(a, 4)
    assert c.shape == (5, 4, 7)
    np.testing.assert_array_equal(c[0], a[:4])
    np.testing.assert_array_equal(c[3], a[[3, 4, 4, 4]])


def test_unnorm_key_follows_spatialvla_names():
    assert unnorm_key("bridge_dataset", "1.0.0") == "bridge_orig/1.0.0"
    assert unnorm_key("fractal20220817_data", "0.1.0") == "fractal20220817_data/0.1.0"
