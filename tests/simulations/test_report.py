"""The reproduction report: per-case rows from results.json, means, paired Wilcoxon tests, ratios, claims."""

import pytest
from scipy.stats import wilcoxon

from simulations import report


def results(dice_of_case: dict[str, float], joint: str = "knee") -> dict:
    """A results.json with one site whose cases have bones "a" (the given Dice) and "b" (Dice 1.0)."""
    per_case = {case: {"dice": {"a": d, "b": 1.0}, "hd95": {"a": 2.0, "b": None}, "assd": {"a": 1.0, "b": 0.5}}
                for case, d in dice_of_case.items()}
    return {"sites": {joint: {"joint": joint, "per_case": per_case}}}


def rows_for(cells: dict[str, list[float]]) -> list[report.CaseScore]:
    rows = []
    for cell, values in cells.items():
        rows += report.case_scores(cell, 0, results({f"c{i}": v for i, v in enumerate(values)}))
    return rows


def test_case_scores_one_row_per_case_and_bone():
    rows = report.case_scores("centralized-full", 2, results({"c0": 0.5, "c1": 0.7}))
    assert len(rows) == 4
    assert rows[0] == report.CaseScore("centralized-full", 2, "knee", "c0", "a", 0.5, 2.0, 1.0)
    assert rows[1].hd95 is None


def test_mean_dice_averages_cases_within_a_joint_then_joints():
    rows = report.case_scores("x", 0, results({"c0": 0.0, "c1": 1.0}, "knee"))
    rows += report.case_scores("x", 0, results({"c0": 1.0}, "ankle"))
    # knee cases: (0+1)/2 = 0.5 and (1+1)/2 = 1 -> 0.75; ankle: 1 -> mean of joints 0.875
    assert report.mean_dice(rows, "x") == pytest.approx(0.875)


def test_summary_has_mean_and_sample_std_per_bone_and_skips_undefined_distances():
    rows = rows_for({"centralized-full": [0.2, 0.4, 0.6]})
    a, b = report.summary(rows, ["centralized-full"])
    assert (a["bone"], a["n"], a["dice_mean"], a["dice_std"]) == ("a", 3, pytest.approx(0.4), pytest.approx(0.2))
    assert b["hd95_mean"] is None and b["assd_mean"] == pytest.approx(0.5)


def test_wilcoxon_pairs_cases_and_matches_scipy():
    full = [0.9, 0.8, 0.85, 0.95, 0.7, 0.75, 0.88, 0.92]
    other = [0.5, 0.6, 0.8, 0.6, 0.65, 0.5, 0.7, 0.9]
    rows = rows_for({"centralized-full": full, "centralized-individual": other, "centralized-shared": full})
    tests = {t["other"]: t for t in report.paired_tests(rows, ["centralized-full", "centralized-individual",
                                                                "centralized-shared"])}
    expected = wilcoxon([(f + 1) / 2 for f in full], [(o + 1) / 2 for o in other]).pvalue
    assert tests["centralized-individual"]["n"] == 8
    assert tests["centralized-individual"]["p_value"] == pytest.approx(expected)
    assert tests["centralized-individual"]["p_value"] < 0.01  # better on all 8 cases
    assert tests["centralized-shared"]["p_value"] == 1.0 and tests["centralized-shared"]["mean_difference"] == 0


def test_ratios_and_claims():
    rows = rows_for({"centralized-full": [0.8] * 4, "centralized-individual": [0.9] * 4,
                     "federated-full-fedavg": [0.78] * 4})
    cells = ["centralized-individual", "centralized-full", "federated-full-fedavg"]
    (ratio,) = report.federated_ratios(rows, cells)
    assert ratio["centralized"] == "centralized-full" and ratio["ratio"] == pytest.approx(0.89 / 0.9)
    claims = {c["claim"]: c["met"] for c in report.acceptance(rows, cells)}
    assert claims == {"federated-full-fedavg >= 0.97 x centralized-full": True,
                      "centralized-full >= centralized-individual": False,
                      "federated-full-fedavg >= centralized-individual": False}


def test_markdown_lists_every_cell_and_test(tmp_path):
    rows = rows_for({"centralized-full": [0.9, 0.8, 0.7], "federated-full-fedavg": [0.8, 0.7, 0.75]})
    cells = ["centralized-full", "federated-full-fedavg"]
    text = report.markdown(report.build_report(rows, cells), cells, "## header")
    assert "| federated-full-fedavg | 0.750 ± 0.050 | 1.000 ± 0.000 | **0.875** |" in text
    assert "| centralized-full | federated-full-fedavg | 3 | +0.0250 |" in text
    report.write_csv(tmp_path / "s.csv", report.build_report(rows, cells)["summary"])
    assert (tmp_path / "s.csv").read_text(encoding="utf-8").splitlines()[0].startswith("cell,joint,bone,n,dice_mean")
