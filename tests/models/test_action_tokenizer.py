import numpy as np
import pytest

from models.spatialvla.action_tokenizer import VOCAB_SIZE, SpatialActionTokenizer, fit_bin_policy, uniform_bin_policy


def _actions(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    a = np.clip(rng.normal(0, 0.4, (n, 7)), -1, 1)
    a[:, 6] = rng.integers(0, 2, n)
    return a


def test_ids_fall_in_their_slot_ranges():
    tok = SpatialActionTokenizer(fit_bin_policy(_actions()))
    ids = tok.encode(_actions(seed=1))
    for slot, (lo, hi) in enumerate(SpatialActionTokenizer.slot_ranges()):
        assert ids[:, slot].min() >= lo and ids[:, slot].max() < hi
    assert VOCAB_SIZE == 8194


def test_decode_recovers_actions_within_a_bin():
    a = _actions(seed=2)
    tok = SpatialActionTokenizer(fit_bin_policy(_actions()))
    d = tok.decode(tok.encode(a))
    np.testing.assert_array_equal(d[:, 6], a[:, 6])  # the gripper is exact
    assert np.abs(d[:, 3:6] - a[:, 3:6]).max() < 0.35  # within the widest (tail) rotation bin
    assert np.abs(d[:, :6] - a[:, :6]).mean() < 0.05
    np.testing.assert_array_equal(tok.encode(tok.decode(tok.encode(a)))[:, 1:], tok.encode(a)[:, 1:])  # rotation/gripper stable


def test_fitted_edges_put_equal_mass_per_bin():
    a = _actions(20000)
    policy = fit_bin_policy(a)
    assert [len(policy["translation"][k]) for k in ("theta_bins", "phi_bins", "r_bins")] == [17, 33, 9]
    roll = np.asarray(policy["rotation"]["roll_bins"])
    assert roll[0] == -1 and roll[-1] == 1 and np.all(np.diff(roll) > 0)
    counts = np.histogram(a[:, 3], bins=roll)[0]
    assert counts.max() / counts.min() < 1.6  # near-equal mass; uniform edges would give ~30x


def test_rejects_a_malformed_bin_policy():
    policy = uniform_bin_policy()
    policy["rotation"]["yaw_bins"] = policy["rotation"]["yaw_bins"][:-1]
    with pytest.raises(ValueError, match="yaw_bins: expected 17"):
        SpatialActionTokenizer(policy)


def test_matches_the_authors_tokenizer_on_their_bridge_grid():
    """Grid ids and decoded actions equal those of SpatialVLA's own tokenizer (recorded by
    tests/models/data/make_reference_447.py) on the bin edges it fits from its scripts/gs_bridge.json."""
    import json
    from pathlib import Path

    ref = json.loads((Path(__file__).parent / "data" / "spatialvla_tiny_447.json").read_text())["action_tokenizer"]
    spec = __import__("importlib.util").util.spec_from_file_location("mk", Path(__file__).parent / "data" / "make_reference_447.py")
    mk = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    tok = SpatialActionTokenizer(ref["bin_policy"])
    ids = tok.encode(mk.reference_actions())
    np.testing.assert_array_equal(ids, np.array(ref["grid_ids"]))
    np.testing.assert_allclose(tok.decode(ids), np.array(ref["decoded"]), atol=1e-6)
    np.testing.assert_array_equal(tok.encode(tok.decode(ids))[:, 1:], ids[:, 1:])  # rotation and gripper round-trip exactly
