"""Co-evolution (`rounds: 2`): round-2 teachers start from the round-1 MOPD student, and the
round-2 student is distilled from them, starting from that student too."""

import json

from mopd.pipeline import methods as M
from mopd.pipeline.presets import PRESETS
from mopd.pipeline.reproduce import reproduce


def test_round_two_starts_teachers_and_student_from_the_round_one_student(tmp_path, monkeypatch):
    calls = {"teacher": [], "mopd": []}
    real_teacher, real_mopd = M.domain_teacher, M.mopd

    def teacher(cfg, doms, d, start, out):
        calls["teacher"].append((d, str(start), out.name))
        return real_teacher(cfg, doms, d, start, out)

    def mopd(cfg, doms, start, dirs, out):
        calls["mopd"].append((str(start), dict(dirs), out.name))
        return real_mopd(cfg, doms, start, dirs, out)

    monkeypatch.setattr(M, "domain_teacher", teacher)
    monkeypatch.setattr(M, "mopd", mopd)
    cfg = PRESETS["micro"]().model_copy(update={"rounds": 2, "baselines": []})
    out = tmp_path / "co"
    reproduce(cfg, out)

    sft, student1 = str(out / "sft" / "model"), str(out / "mopd" / "model")
    assert sorted(calls["teacher"]) == sorted(
        [(d, sft, f"teacher_{d}") for d in ("reversal", "sorting")]
        + [(d, student1, f"teacher_{d}_round2") for d in ("reversal", "sorting")])
    (start1, dirs1, name1), (start2, dirs2, name2) = calls["mopd"]
    assert (start1, name1) == (sft, "mopd") and (start2, name2) == (student1, "mopd_round2")
    assert dirs2 == {d: str(out / f"teacher_{d}_round2" / "model") for d in ("reversal", "sorting")}
    assert dirs1 != dirs2

    rows = {r["method"] for r in json.loads((out / "report.json").read_text())["rows"]}
    assert rows == {"MOPD", "MOPD (round 2)"}
