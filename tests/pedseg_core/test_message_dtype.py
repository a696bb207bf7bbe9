"""fp16 on the wire: the server sees a site's weights to within fp16 rounding of the site's update (not of the
weights), integer arrays pass unchanged, and an update beyond fp16's range arrives as inf."""

from __future__ import annotations

import numpy as np

from pedseg_core.message_dtype import decode_update, encode_update, rounded, widened


def test_a_site_update_survives_fp16_to_within_the_rounding_of_the_update_itself():
    rng = np.random.default_rng(0)
    global_ = {"w": rng.normal(0, 0.05, (64, 3, 3, 3)).astype(np.float32), "steps": np.array([7], np.int64)}
    down = rounded(global_)
    assert down["w"].dtype == np.float16 and down["w"].nbytes == global_["w"].nbytes // 2
    assert down["steps"].dtype == np.int64 and down["steps"][0] == 7
    received = widened(down)
    assert received["w"].dtype == np.float32
    trained = {"w": received["w"] + rng.normal(0, 1e-3, received["w"].shape).astype(np.float32),
               "steps": np.array([9], np.int64)}
    up = encode_update(trained, received)
    assert up["w"].dtype == np.float16 and up["steps"][0] == 9
    seen = decode_update(up, received)
    update = np.abs(trained["w"] - received["w"])
    error = np.abs(seen["w"] - trained["w"])
    assert seen["w"].dtype == np.float32
    assert (error <= update * 2.0 ** -11 + 1e-7).all()  # fp16 keeps 11 significant bits of the update
    # rounding the weights themselves would lose far more than rounding the update does
    assert error.max() < 0.1 * np.abs(rounded(trained)["w"].astype(np.float32) - trained["w"]).max()


def test_an_update_beyond_fp16_range_arrives_as_inf_for_the_update_checks_to_reject():
    received = {"w": np.zeros(3, np.float32)}
    up = encode_update({"w": np.array([1e6, 0.5, -1e6], np.float32)}, received)
    assert np.isinf(up["w"][[0, 2]]).all() and up["w"][1] == 0.5
    assert not np.isfinite(decode_update(up, received)["w"]).all()


def test_an_array_that_is_not_an_fp16_update_of_a_known_array_stays_as_sent():
    reference = {"w": np.zeros((2, 2), np.float32)}
    sent = {"w": np.ones(3, np.float16), "foreign": np.ones(2, np.float16), "fp32": np.ones(2, np.float32)}
    seen = decode_update(sent, reference)
    assert all(seen[k] is sent[k] for k in sent)  # wrong shape, unknown key, not fp16: the checks judge them
