"""The number blocks of README.md and docs/*.md: the committed files pass the check, a digit edited inside a block
fails it, rewriting is idempotent, and the generated soups table equals a hand computation (mean,
paired t-interval with scipy) on records written by hand in the run-record format."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import readme_numbers as readme  # noqa: E402  (a script of the repository, not of the package)

main = readme.main
SPLITS = {"id_val": "acc_avg", "id_test": "acc_avg", "test": "acc_worst_region"}  # FMoW's headline metrics
PROVENANCE = {"cpu": "Test CPU", "torch": "2.x", "commit": "abc"}


def test_the_committed_readme_and_docs_pass_the_check():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.check_files([ROOT / "README.md"], readme.REQUIRED) == []
    assert set(readme.REQUIRED) <= set(readme.parse(text))
    files = readme.documents(ROOT)
    assert len(files) > 1 and readme.check_files(files, readme.BLOCKS) == []  # every block, in one file each
    assert main(["--check", "--readme", *map(str, files)]) == 0


def test_blocks_spread_over_files_are_written_in_place_and_checked_together(tmp_path):
    (tmp_path / "docs").mkdir()
    a, b = tmp_path / "README.md", tmp_path / "docs" / "m.md"
    a.write_text("a\n<!-- numbers:t -->\n<!-- /numbers:t -->\n", encoding="utf-8")
    b.write_text("b\n<!-- numbers:u -->\n<!-- /numbers:u -->\n", encoding="utf-8")
    files = readme.documents(tmp_path)
    assert files == [a, b]
    assert len(readme.check_files(files, ("t", "u"))) == 2  # neither block stamped yet
    status = readme.write_files(files, {"t": ("1", PROVENANCE), "u": ("2", PROVENANCE)})
    assert status == {f"{a} numbers:t": "rewritten", f"{b} numbers:u": "rewritten"}
    assert readme.parse(b.read_text(encoding="utf-8"))["u"]["body"] == "2" and readme.check_files(files, ("t", "u")) == []
    assert readme.check_files(files, ("t", "u", "v")) == [f"block numbers:v is missing from {a}, {b}"]
    with pytest.raises(ValueError, match="none of"):
        readme.write_files(files, {"v": ("3", PROVENANCE)})
    b.write_text(b.read_text(encoding="utf-8") + a.read_text(encoding="utf-8"), encoding="utf-8")  # t twice
    assert readme.check_files(files, ("t", "u")) == [f"block numbers:t is in both {a} and {b}; keep one"]


def test_a_digit_edited_inside_a_block_fails_the_check(tmp_path):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.parse(text)["soups"]
    start = block["span"][0] + text[block["span"][0]:].index("-->\n") + 4  # the body, after the stamp
    digit = re.compile(r"\d").search(text, start)
    assert digit and digit.start() < block["span"][1]
    edited = text[:digit.start()] + str((int(digit[0]) + 1) % 10) + text[digit.end():]
    copy = tmp_path / "README.md"
    copy.write_text(edited, encoding="utf-8")
    problems = readme.check_files([copy], readme.REQUIRED)
    assert len(problems) == 1 and "numbers:soups was edited by hand" in problems[0]
    assert main(["--check", "--readme", str(copy)]) == 1
    # no records: the command says what to run and leaves the README as it is
    none = str(tmp_path / "none")
    assert main(["--readme", str(copy), "--output-dir", none, "--soups-dir", none]) == 2
    assert copy.read_text(encoding="utf-8") == edited
    # a missing block and an unclosed marker are failures too
    copy.write_text(text[:block["span"][0]] + text[block["span"][1]:], encoding="utf-8")
    assert readme.check_files([copy], readme.REQUIRED) == [f"block numbers:soups is missing from {copy}"]
    copy.write_text("<!-- numbers:x -->\n1\n", encoding="utf-8")
    assert "closing" in readme.check_files([copy])[0]


def test_rewrite_puts_stamped_bodies_in_place_and_is_idempotent(tmp_path):
    text = "a\n<!-- numbers:t -->\n<!-- /numbers:t -->\nb\n<!-- numbers:u old -->\nkept 1\n<!-- /numbers:u -->\n"
    new, status = readme.rewrite(text, {"t": ("| x |\n|---|\n| 0.5 |", PROVENANCE), "u": None})
    assert status == {"t": "rewritten", "u": "left as it is (its records are absent)"}
    assert new.startswith("a\n<!-- numbers:t cpu=\"Test CPU\" torch=\"2.x\" commit=\"abc\" sha256=")
    assert "| 0.5 |\n<!-- /numbers:t -->\nb\n" in new and "kept 1" in new
    again, status = readme.rewrite(new, {"t": ("| x |\n|---|\n| 0.5 |", PROVENANCE), "u": None})
    assert again == new and status["t"] == "unchanged"
    assert readme.parse(new)["t"]["stamp"]["cpu"] == "Test CPU"
    copy = tmp_path / "README.md"
    copy.write_text(new, encoding="utf-8")
    assert [p.split(" was")[0] for p in readme.check_files([copy], ("t",))] == [f"{copy}: block numbers:u"]  # never stamped
    # a block with no records: a never-stamped one gets the text saying what to run, a stamped one stays
    filled, status = readme.rewrite(new, {"t": None, "u": None}, {"t": "run X", "u": "run Y"})
    assert readme.render("u", "run Y", {"records": "none"}) in filled and "kept 1" not in filled
    copy.write_text(filled, encoding="utf-8")
    assert readme.check_files([copy], ("t", "u")) == [] and filled.startswith(new[:new.index("<!-- numbers:u")])
    assert status == {"t": "left as it is (its records are absent)", "u": "rewritten"}


def _value(seed, lr, variant, split):
    """Hand-picked values, distinct per (seed, lr, variant, split)."""
    base = {1e-3: 0.40, 3e-4: 0.50}[lr] + 0.02 * seed * seed + {"best": 0.0, "last": -0.01 * seed, "swa": 0.005 + 0.001 * seed}[variant]
    return base + {"id_val": 0.1, "id_test": 0.0, "test": -0.3 + 0.007 * seed}[split]


def _soup_value(seed, variant, split):
    return 0.52 + 0.013 * seed + {"uniform_soup": 0.0, "greedy_soup": 0.02 * seed}[variant] \
        + {"id_val": 0.1, "id_test": 0.0, "test": -0.3}[split]


def _write(folder: Path, record: dict) -> None:
    (folder / record["run_id"]).mkdir(parents=True)
    (folder / record["run_id"] / "result.json").write_text(json.dumps(record))


def _soup_stage(tmp_path) -> Path:
    soups_dir, common = tmp_path / "soups", {"experiment": "demo", "dataset": "fmow", "method": "finetune", "fraction": 0.1,
                                              "hardware": {"cpu": "Test CPU"}, "versions": {"torch": "2.x"},
                                              "git_commit": "0123456789abcdef"}
    for seed in (0, 1, 2):
        ids = []
        for lr in (1e-3, 3e-4):
            variants = {v: {s: {m: _value(seed, lr, v, s)} for s, m in SPLITS.items()} for v in ("best", "last", "swa")}
            ids.append(f"fmow-finetune-f0.1-lr{lr:g}-s{seed}")
            _write(soups_dir / "demo", {**common, "run_id": ids[-1], "seed": seed, "lr": lr, "identity": {"seed": seed},
                                        "kept_weights": {"sha256": f"digest-{lr:g}-{seed}"}, "selection": {"variant": "best"}, "metrics": variants["best"], "variants": variants})
        variants = {v: {s: {m: _soup_value(seed, v, s)} for s, m in SPLITS.items()} for v in ("uniform_soup", "greedy_soup")}
        kept = ids[1:] if seed == 1 else ids
        _write(soups_dir / "demo" / "soups", {
            **common, "run_id": f"soup-s{seed}", "seed": seed, "lr": None, "kind": "soup",
            "identity": {"ingredients": {i: f"digest-{lr:g}-{seed}" for i, lr in zip(ids, (1e-3, 3e-4))}},
            "selection": {"variant": "greedy_soup"}, "metrics": variants["greedy_soup"],
            "variants": variants, "soups": {"greedy_soup": {"ingredients": kept}, "uniform_soup": {"ingredients": ids}}})
    (tmp_path / "runs" / "demo").mkdir(parents=True)  # the sweep's folder, with no runs: no trend line
    return soups_dir


def _cells(body: str, label: str) -> list[str]:
    line = next(row for row in body.splitlines() if row.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_the_soups_block_equals_a_hand_computation(tmp_path):
    soups_dir = _soup_stage(tmp_path)
    block = readme.soups_block(tmp_path / "runs", soups_dir, "demo", ("fmow",))
    # the best single run: lr 3e-4 (the better mean on ID val), its `best` epoch
    best = {s: np.array([_value(seed, 3e-4, "best", s) for seed in (0, 1, 2)]) for s in ("id_test", "test")}
    assert _cells(block.body, "best single run")[:2] == [f"{best['id_test'].mean():.3f}", f"{best['test'].mean():.3f}"]

    def paired(a):  # mean difference and 95 % t-interval by hand (scipy's t quantile)
        d = a - best[split]
        half = st.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
        return f"{d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]"
    for i, split in enumerate(("id_test", "test")):
        soup = np.array([_soup_value(seed, "uniform_soup", split) for seed in (0, 1, 2)])
        assert _cells(block.body, "uniform soup")[i] == paired(soup)
        swa = np.array([_value(seed, 3e-4, "swa", split) for seed in (0, 1, 2)])
        assert _cells(block.body, "SWA")[i] == paired(swa)
    # SWA is +0.005 to +0.007: its interval lies above zero on both splits
    assert "paired intervals above zero on both ID and OOD test: SWA" in block.body
    assert readme.provenance(block.records) == {"cpu": "Test CPU", "torch": "2.x", "commit": "0123456789ab"}


def test_the_greedy_block_counts_the_kept_runs(tmp_path):
    body = readme.greedy_block(_soup_stage(tmp_path), "demo", ("fmow",)).body
    rows = [line for line in body.splitlines() if line.startswith("| fmow")]
    assert [r.split("|")[5].strip() for r in rows] == ["2 of 2", "1 of 2", "2 of 2"]
    assert rows[1].split("|")[6].strip() == "0.0003"


def test_the_coverage_block_pairs_clip_with_its_twin_per_coverage(tmp_path):
    """Records of a coverage ablation written by hand (each run's weights beside a pretraining's
    meta.json): the gap cell is the paired t-interval of finetune - vision_only at that coverage."""
    ood = {0: 0.05, 1: 0.09, 2: 0.06}
    weights = {}
    for coverage in (1.0, 0.5):
        folder = tmp_path / f"pretrain-{coverage:g}"
        folder.mkdir()
        (folder / "meta.json").write_text(json.dumps({"config": {}, "coverage": coverage}))
        weights[coverage] = str(folder / "tiny-clip.safetensors")

    def run(method, coverage, seed, value, fraction=0.1, lr=3e-4):
        metrics = {"id_val": {"acc_avg": 0.5}, "id_test": {"acc_avg": 0.5}, "test": {"acc_worst_region": value}}
        return {"run_id": f"fmow-{method}-c{coverage:g}-s{seed}", "experiment": "coverage_demo", "dataset": "fmow",
                "method": method, "fraction": fraction, "seed": seed, "lr": lr, "params": {"pretrained": weights[coverage]},
                "identity": {"pretrained": weights[coverage]}, "selection": {"variant": "best"}, "metrics": metrics}
    folder = tmp_path / "runs" / "coverage_demo"
    for coverage in (1.0, 0.5):
        _write(folder, run("zeroshot", coverage, 0, 0.01 * coverage, fraction=0.0, lr=None))
        for seed in (0, 1, 2):
            _write(folder, run("finetune", coverage, seed, 0.2 * coverage + ood[seed] * seed))
            _write(folder, run("vision_only", coverage, seed, 0.1 + ood[seed]))
    body = readme.coverage_block(tmp_path / "runs").body
    for coverage in (1.0, 0.5):
        d = np.array([0.2 * coverage + ood[s] * s - 0.1 - ood[s] for s in (0, 1, 2)])
        half = st.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
        assert _cells(body, f"{coverage:g}") == [f"{0.01 * coverage:.3f}",
                                                 f"{d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]"]
    assert "twin (the whole interval above zero): none; below it: none." in body  # both intervals straddle zero
