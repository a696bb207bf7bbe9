"""A site's privacy policy: a run may ask for less than it allows, never for more; bad files are one line."""

from __future__ import annotations

import pytest

from pedseg_core import policy as policy_module
from pedseg_core.errors import PedsegError
from pedseg_core.policy import Requests, SitePolicy, describe_policy, load_policy


def test_the_default_policy_keeps_per_case_metrics_and_needs_enough_slices():
    granted, refusals = SitePolicy().grant(Requests(per_case_metrics=True, min_prototype_slices=8, share_head=True))
    assert granted == Requests(per_case_metrics=False, share_prototypes=True, min_prototype_slices=32,
                               share_head=True)
    assert len(refusals) == 2 and "per-case metrics: refused" in refusals[0] and "needs at least 32" in refusals[1]


def test_asking_for_less_than_allowed_is_no_refusal():
    policy = SitePolicy(per_case_metrics=True, min_prototype_slices=16)
    asked = Requests(per_case_metrics=False, share_prototypes=False, min_prototype_slices=64, share_head=False)
    assert policy.grant(asked) == (asked, [])


def test_a_strict_policy_refuses_prototypes_and_the_head():
    granted, refusals = SitePolicy(share_prototypes=False, share_head=False).grant(Requests(share_head=True))
    assert not granted.share_prototypes and not granted.share_head and len(refusals) == 2


@pytest.mark.parametrize("text, message", [
    ("dp: {epsilon: -1}", "dp.epsilon must be greater than 0, got -1"),
    ("dp: {epsilon: 8, delta: 2}", "dp.delta must be less than 1, got 2"),
    ("dp: {epsilon: 8, planned_steps: 0}", "dp.planned_steps must be greater than or equal to 1, got 0"),
    ("share_head: maybe", "share_head must be a valid boolean, got 'maybe'"),
    ("per_case: true", r"top level: unknown option 'per_case' \(known: allowed_schemes, approved_apps, dp, "),
    ("- a list", "expected a mapping at the top level"),
    ("dp: [", "invalid YAML"),
    ("approved_apps: [abc]", "approved_apps.0 must match pattern"),
    ("allowed_schemes: [federated]", "allowed_schemes.0 must be one of individual, transfer, shared"),
    ("min_batch_size: 0", "min_batch_size must be greater than or equal to 1, got 0"),
    ("max_learning_rate: 0", "max_learning_rate must be greater than 0"),
    ("min_eval_cases: 0", "min_eval_cases must be greater than or equal to 1"),
])
def test_a_bad_policy_is_one_line_naming_the_file(text, message, tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PedsegError, match=message) as err:
        load_policy(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_a_dp_policy_reads_back():
    assert load_policy(None) == SitePolicy()
    policy = SitePolicy.model_validate({"dp": {"epsilon": 8}})
    assert (policy.dp.epsilon, policy.dp.delta, policy.dp.max_grad_norm) == (8.0, 1e-5, 1.0)


def test_approved_apps_are_checked_only_when_listed():
    digest = "0123456789abcdef" * 4
    assert SitePolicy().approves(digest)  # no list: the site's own defaults decide (client/approved_app.py)
    strict = SitePolicy.model_validate({"approved_apps": [digest]})
    assert strict.approves(digest) and not strict.approves("f" * 64)
    assert not SitePolicy.model_validate({"approved_apps": []}).approves(digest)  # an empty list: none


def test_every_bound_is_a_policy_item_with_a_safe_default_named_in_the_description_and_the_file_docs():
    default = SitePolicy()
    assert default.allowed_schemes == ("multi-domain", "contrastive", "full")  # `shared` only when listed
    assert (default.min_batch_size, default.max_learning_rate, default.require_augmentation) == (4, 0.01, True)
    items = ("allowed_schemes", "min_batch_size", "min_local_steps", "max_learning_rate", "max_image_size",
             "max_width", "max_embedding_dim", "require_augmentation", "min_eval_cases")
    description = describe_policy(default)
    assert all(f"\n{item}:" in policy_module.__doc__ and item in description for item in items)

