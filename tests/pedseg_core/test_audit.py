"""`pedseg audit`'s reading of a site's log: what fails the audit (flags) and what a reviewer should look at
(evaluations over few cases, new or resumed run folders, granted arrays, SecAgg+'s limit); the log's lines are
appended 0600."""

from __future__ import annotations

import stat

from pedseg_core.audit import append_line, read_audit, summarize_audit
from pedseg_core.audit_request import REQUEST_OPTIONS, request_values
from pedseg_core.config import build_config
from pedseg_core.policy import SitePolicy
from pedseg_core.train.request_bounds import violations

SHARED = {"record": "arrays", "key": "w", "shape": [4, 3], "dtype": "float32", "sha256": "0" * 64}


def message(run: str, server_round: int, kind: str = "train", **extra) -> dict:
    line = {"run": int(run), "federation_run": run, "round": server_round, "type": kind, "arrays": [SHARED],
            "metrics": {}, "config": {}}
    return {**line, **extra}


def summary(lines: list[dict]) -> tuple[str, int]:
    out, flagged = summarize_audit(lines)
    return "\n".join(out), flagged


def test_an_honest_run_is_neither_flagged_nor_looked_at():
    text, flagged = summary([message("5", 1), message("5", 1, "evaluate", arrays=[], cases=3), message("5", 2)])
    assert flagged == 0 and "nothing flagged" in text and "LOOK" not in text and "NOTE" not in text


def test_few_cases_new_and_resumed_run_folders_and_granted_arrays_are_looked_at():
    head = {**SHARED, "record": "joint-arrays", "key": "head"}
    prototype = {**SHARED, "record": "prototypes", "key": "ankle|0"}
    lines = [message("5", 1, arrays=[SHARED, head, prototype]), message("5", 1, "evaluate", arrays=[], cases=1),
             message("6", 2), message("5", 3)]
    text, flagged = summary(lines)
    assert flagged == 0
    assert "LOOK: an evaluation over 1 case(s) (fewer than 2: one patient's metrics)" in text
    assert "LOOK: a new run folder (federation-run 6), not seen earlier in this log" in text
    assert "LOOK: back in run folder 5 after another run's messages" in text
    assert "LOOK: granted: the joint's head (joint-arrays) left the site" in text
    assert "LOOK: granted: prototypes (prototypes) left the site" in text
    assert "4 item(s) to look at" in text  # per message: its granted arrays are one


def test_a_refused_request_and_per_case_metrics_are_flagged():
    refused = message("5", 1, error="PedsegError: refused by the site's policy: min_batch_size (4) does not admit "
                                    "the run config's train.batch_size = 1")
    text, flagged = summary([refused, message("5", 1, "evaluate", arrays=[], cases=4, per_case=True)])
    assert flagged == 2 and "FLAG: a request outside the site's policy (refused)" in text
    assert "FLAG: per-case metrics" in text


def test_a_run_under_secure_aggregation_says_what_it_protects_against():
    text, _ = summary([message("5", 1, secure_aggregation=True)])
    assert "honest-but-curious server only" in text and "public keys unauthenticated" in text
    assert "SecAgg+" not in summary([message("5", 1)])[0]


def test_the_request_is_shown_with_each_message():
    values = {"scheme": "multi-domain", "train.batch_size": 4, "train.steps_per_epoch": 10,
              "train.learning_rate": 0.003, "data.image_size": 64}
    text, _ = summary([message("5", 1, request={"values": values})])
    assert "request: scheme=multi-domain, train.batch_size=4, train.steps_per_epoch=10, train.learning_rate=0.003, " \
           "data.image_size=64" in text


def test_the_log_is_appended_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "audit.jsonl"
    append_line(path, {"round": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    append_line(path, {"round": 2})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [line["round"] for line in read_audit(tmp_path)] == [1, 2]


def test_the_audit_records_every_option_the_policy_bounds():
    """A run that breaks every bound: each option `violations` names is among the values each audit line keeps."""
    cfg = build_config("tiny", overrides={"scheme": "full", "train": {"batch_size": 1, "steps_per_epoch": 1},
                                          "data": {"augment": False, "augment_probability": 0.0}})
    policy = SitePolicy(allowed_schemes=("multi-domain",), min_batch_size=64, min_local_steps=64,
                        max_learning_rate=1e-9, max_image_size=32, max_width=1, max_embedding_dim=1)
    named = {option for _, option, _ in violations(cfg, policy)}
    assert len(named) == 14 and named <= set(REQUEST_OPTIONS)
    values = request_values(cfg)
    assert values["train.batch_size"] == 1 and values["data.augment"] is False
