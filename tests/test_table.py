"""`clipdg table` and analysis.compare_experiments on fake run records: per dataset, intervals over
seeds, lr chosen on validation (or every lr), text / csv / markdown, experiments side by side, paired."""
from __future__ import annotations

import io

import pandas as pd
import pytest

from clipdg_nb import analysis, cli, runs
from clipdg_nb.analysis import stats, tables

pytestmark = pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")

NOISE = (0.0, 0.013, -0.008)  # per seed


def _record(experiment, dataset, fraction, seed, lr, id_test, test, id_val):
    idm, oodm = ("acc_avg", "acc_worst_region") if dataset == "fmow" else ("F1-macro_all", "F1-macro_all")
    metrics = {"id_val": {idm: id_val}, "id_test": {idm: id_test}, "val": {oodm: test}, "test": {oodm: test}}
    return dict(run_id=f"{dataset}-finetune-f{fraction:g}-lr{lr:g}-s{seed}", experiment=experiment, dataset=dataset,
                method="finetune", fraction=fraction, seed=seed, lr=lr, params={}, metrics=metrics,
                selection={"split": "id_val", "variant": "best"})


def _write(root, experiment, shift, seeds_at_1=(0, 1, 2)):
    for dataset in ("fmow", "iwildcam"):
        for fraction in (0.1, 1.0):
            for seed in seeds_at_1 if fraction == 1.0 else (0, 1, 2):
                for lr, dv in ((1e-4, 0.05), (1e-3, 0.0)):  # 1e-4 wins on validation
                    base = 0.4 + 0.2 * fraction + NOISE[seed] + (0.01 * seed * shift)
                    rec = _record(experiment, dataset, fraction, seed, lr, base + dv, base - 0.2 + shift, base + dv)
                    runs.Run(root / experiment / rec["run_id"]).finish(rec)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    _write(root, "paper", 0.0)
    _write(root, "beyond", 0.03, seeds_at_1=(0, 1))
    return root


def _cli(capsys, *argv):
    code = cli.main(["table", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_headline_table_intervals_over_seeds_with_lr_chosen_on_validation(root):
    df = analysis.load_experiment_runs(root, "paper")
    chosen = analysis.apply_selection(df, analysis.select_lr(df, "id_val"))
    table = tables.headline_table(chosen, column="paper")
    assert set(table["lr"]) == {1e-4} and set(table["column"]) == {"paper"}
    row = table[(table["dataset"] == "fmow") & (table["fraction"] == 0.1) & (table["split"] == "test")].iloc[0]
    expected = stats.mean_ci([0.42 + n - 0.2 for n in NOISE])
    assert row["metric"] == "acc_worst_region" and row["n"] == 3
    assert (row["mean"], row["low"], row["high"]) == pytest.approx((expected["mean"], expected["low"], expected["high"]))
    assert set(tables.headline_table(df)["lr"]) == {1e-4, 1e-3}


def test_table_text_one_block_per_dataset(root, capsys):
    code, out, _ = _cli(capsys, "--experiment", "paper", "--output-dir", str(root))
    assert code == 0
    fmow, iwildcam = out.split("\n\n")
    assert fmow.startswith("fmow: ID test acc_avg; OOD test acc_worst_region; mean [95% interval] over seeds")
    assert iwildcam.startswith("iwildcam: ID test F1-macro_all; OOD test F1-macro_all")
    assert "learning rate chosen on id_val" in fmow and "0.001" not in fmow
    assert "0.222 [" in fmow  # OOD mean at fraction 0.1 with its interval
    code, out, _ = _cli(capsys, "--experiment", "paper", "--output-dir", str(root), "--dataset", "fmow", "--all-lrs")
    assert "iwildcam" not in out and "0.001" in out and "every learning rate" in out


def test_table_csv_and_markdown(root, capsys):
    _, out, _ = _cli(capsys, "--experiment", "paper", "--output-dir", str(root), "--format", "csv")
    frame = pd.read_csv(io.StringIO(out))
    assert list(frame.columns) == [*tables.HEADLINE_COLUMNS, "paired"]
    assert set(frame["dataset"]) == {"fmow", "iwildcam"} and frame["low"].notna().all()
    _, out, _ = _cli(capsys, "--experiment", "paper", "--output-dir", str(root), "--format", "markdown")
    assert out.startswith("### fmow\n") and "\n### iwildcam\n" in out
    assert "| method | variant | fraction | lr | ID test | OOD test | seeds |\n|---|---|---|---|---|---|---|" in out


def test_experiments_side_by_side_with_paired_intervals(root, capsys):
    frames = {name: analysis.load_experiment_runs(root, name) for name in ("paper", "beyond")}
    table = analysis.compare_experiments(frames)
    assert list(dict.fromkeys(table["column"])) == ["paper", "beyond", "beyond - paper"]
    paired = table[table["paired"] & (table["dataset"] == "fmow") & (table["split"] == "test")].set_index("fraction")
    assert paired.loc[0.1, "n"] == 3 and paired.loc[1.0, "n"] == 2  # only the seeds both have
    diffs = [0.03 + 0.01 * s * 0.03 for s in range(3)]
    assert paired.loc[0.1, "mean"] == pytest.approx(stats.mean_ci(diffs)["mean"])
    assert paired.loc[0.1, "low"] > 0
    every = analysis.compare_experiments(frames, select_split=None)
    assert set(every.loc[every["paired"], "lr"]) == {1e-4, 1e-3}  # every lr, paired at equal lr
    ids = table[table["paired"] & (table["split"] == "id_test") & (table["dataset"] == "fmow")]
    assert ids["mean"].abs().max() < 0.01  # the ID numbers barely move
    code, out, _ = _cli(capsys, "--experiment", "paper", "--experiment", "beyond", "--output-dir", str(root),
                        "--dataset", "fmow")
    assert code == 0
    header = out.splitlines()[1]
    for col in ("paper ID test", "beyond OOD test", "beyond - paper OOD test", "beyond - paper pairs"):
        assert col in header
    assert "+0.030 [" in out


def test_table_errors_name_the_experiment(root, capsys):
    code, _, err = _cli(capsys, "--experiment", "nope", "--output-dir", str(root))
    assert code == 2 and "nope" in err
    with pytest.raises(ValueError, match="format"):
        tables.format_headline(tables.headline_table(analysis.load_experiment_runs(root, "paper")), "html")


def _blocks_record(seed, train_blocks, value):
    metrics = {s: {"acc_avg": value, "acc_worst_region": value} for s in ("id_val", "id_test", "val", "test")}
    identity = {"dataset": "fmow", "method": "finetune", "fraction": 1.0, "seed": seed, "lr": 1e-4,
                "epochs": 4, "train_blocks": train_blocks}
    return dict(run_id=f"fmow-finetune-f1-lr0.0001-s{seed}-b{train_blocks}", experiment="blocks", dataset="fmow",
                method="finetune", fraction=1.0, seed=seed, lr=1e-4, params={}, identity=identity,
                metrics=metrics, selection={"split": "id_val", "variant": "best"})


def test_runs_that_differ_in_a_setting_are_never_pooled(tmp_path, capsys):
    """Two runs differing only in train_blocks (0.311 vs 0.289): two labelled rows, not one '0.300'."""
    for blocks, value in ((3, 0.311), (6, 0.289)):
        rec = _blocks_record(0, blocks, value)
        runs.Run(tmp_path / "blocks" / rec["run_id"]).finish(rec)
    records = runs.load_records(tmp_path / "blocks")
    assert sorted(runs.setting_labels(records)) == ["train_blocks=3", "train_blocks=6"]
    with pytest.raises(ValueError, match=r"differ in their settings \(train_blocks=3; train_blocks=6\)"):
        tables.headline_table(runs.tidy(records))  # a hand-built frame is refused, naming the settings
    code, out, _ = _cli(capsys, "--experiment", "blocks", "--output-dir", str(tmp_path), "--format", "csv")
    assert code == 0
    table = pd.read_csv(io.StringIO(out))
    means = table[table["split"] == "test"].set_index("method")["mean"]
    assert means.to_dict() == pytest.approx({"finetune [train_blocks=3]": 0.311, "finetune [train_blocks=6]": 0.289})
    text = cli.main(["table", "--experiment", "blocks", "--output-dir", str(tmp_path)])
    assert text == 0 and "n/a (1 seed)" in capsys.readouterr().out  # one seed: no interval, said so


def test_one_seed_interval_reads_na_not_nan():
    assert analysis.fmt_ci(0.05, float("nan"), float("nan"), 1) == "+0.050, interval n/a (1 seed)"
    assert tables.ci_text(0.3, float("nan"), float("nan"), 3, False) == "0.300 [n/a (1 seed)]"


def _soup_stage(folder):
    """The soups stage's own output folder: per seed, two runs (kept weights, lr 1e-3 and 1e-4, the
    latter better on validation) and a soup record of both, like 05_model_soups writes them."""
    for seed in (0, 1, 2):
        ids = {}
        for lr, dv in ((1e-3, 0.0), (1e-4, 0.05)):
            rec = _record("demo", "fmow", 0.1, seed, lr, 0.5 + NOISE[seed] + dv, 0.3 + NOISE[seed], 0.5 + dv)
            rec["kept_weights"] = {"sha256": f"digest-{lr:g}-{seed}"}
            runs.Run(folder / "demo" / rec["run_id"]).finish(rec)
            ids[rec["run_id"]] = rec["kept_weights"]["sha256"]
        soup = {v: {"id_val": {"acc_avg": 0.6}, "id_test": {"acc_avg": 0.6 + d + NOISE[seed]},
                    "val": {"acc_worst_region": 0.4}, "test": {"acc_worst_region": 0.4 + d}}
                for v, d in (("uniform_soup", 0.0), ("greedy_soup", 0.01 * seed))}
        runs.Run(folder / "demo" / "soups" / f"fmow-finetune-f0.1-soup-s{seed}").finish(dict(
            run_id=f"fmow-finetune-f0.1-soup-s{seed}", experiment="demo", kind="soup", dataset="fmow", method="finetune",
            fraction=0.1, seed=seed, lr=None, params={}, identity={"ingredients": ids}, metrics=soup["greedy_soup"],
            variants=soup, selection={"split": "id_val", "variant": "greedy_soup"},
            soups={"uniform_soup": {"ingredients": list(ids)}, "greedy_soup": {"ingredients": list(ids)[1:]}}))


def test_table_shows_soups_and_finds_the_soups_stage_folder(tmp_path, capsys):
    _soup_stage(tmp_path / "soups")
    # `--experiment soups`: an output folder of its own (the soups stage's outputs/runs/soups)
    code, out, err = _cli(capsys, "--experiment", "soups", "--output-dir", str(tmp_path), "--format", "csv")
    assert code == 0 and "its experiment(s) demo" in err
    table = pd.read_csv(io.StringIO(out))
    assert set(table["column"]) == {"soups/demo"}
    test = table[table["split"] == "test"].set_index("variant")
    assert set(test.index) == {"best", "uniform_soup", "greedy_soup"}
    assert test.loc["best", "lr"] == 1e-4 and pd.isna(test.loc["uniform_soup", "lr"])  # a soup has no single lr
    for variant, values in (("uniform_soup", [0.4] * 3), ("greedy_soup", [0.4, 0.41, 0.42])):
        expected = stats.mean_ci(values)
        assert test.loc[variant, ["mean", "n"]].tolist() == pytest.approx([expected["mean"], 3])
    # the same folder named as --output-dir: the soups of <output_dir>/<experiment>/soups come with its runs
    code, out, _ = _cli(capsys, "--experiment", "demo", "--output-dir", str(tmp_path / "soups"))
    assert code == 0 and "uniform_soup" in out and "greedy_soup" in out and "soups: their ingredients" in out
    # a soup of runs since remade is no longer the experiment's: left out (and warned)
    soup = runs.Run(tmp_path / "soups/demo/soups/fmow-finetune-f0.1-soup-s2")
    record = soup.record()
    record["identity"]["ingredients"] = {k: "other" for k in record["identity"]["ingredients"]}
    runs.write_json(soup.path / "result.json", record)
    with pytest.warns(UserWarning, match="skipping 1 soups"):
        code, out, _ = _cli(capsys, "--experiment", "demo", "--output-dir", str(tmp_path / "soups"), "--format", "csv")
    table = pd.read_csv(io.StringIO(out))
    assert table.loc[table["variant"] == "greedy_soup", "n"].tolist() == [2, 2]


def test_table_shows_a_calibration_figure_of_the_chosen_runs_and_soups(tmp_path, capsys):
    """`--metric ece`: the mean ECE over seeds of the runs of the lr chosen on validation (never of
    the other lr) and of the soups, read from the records' `calibration` as evaluate.CALIBRATION names it."""
    _soup_stage(tmp_path / "soups")
    eces = {}
    for folder in sorted((tmp_path / "soups" / "demo").rglob("result.json")):
        record = runs.Run(folder.parent).record()
        variant = record["selection"]["variant"]
        ece = round(0.01 * record["seed"] + (0.2 if record.get("lr") == 1e-3 else 0.0) + (0.05 if record.get("kind") else 0), 4)
        eces[record["run_id"]] = ece
        record["calibration"] = {variant: {s: {"ece": ece, "ece_ts": ece / 2, "brier": 0.5, "brier_ts": 0.4, "nll": 1.0, "nll_ts": 0.9,
                                               "temperature": 1.5, "temperature_split": "id_val"}
                                           for s in ("id_test", "test")}}
        runs.write_json(folder, record)
    code, out, _ = _cli(capsys, "--experiment", "demo", "--output-dir", str(tmp_path / "soups"), "--format", "csv",
                        "--metric", "ece")
    assert code == 0
    table = pd.read_csv(io.StringIO(out)).set_index(["variant", "split"])
    assert set(table["metric"]) == {"ece"}
    chosen = [e for r, e in eces.items() if "lr0.0001" in r]  # lr 1e-4 wins on validation
    assert table.loc[("best", "test"), "mean"] == pytest.approx(stats.mean_ci(chosen)["mean"])
    assert table.loc[("greedy_soup", "id_test"), "mean"] == pytest.approx(0.06)  # the soups' 0.05 + 0.01 * seed
    code, out, _ = _cli(capsys, "--experiment", "demo", "--output-dir", str(tmp_path / "soups"), "--metric", "ece_ts")
    assert code == 0 and "ID test ece_ts" in out
    code, _, err = _cli(capsys, "--experiment", "demo", "--output-dir", str(tmp_path / "soups"), "--metric", "nope")
    assert code == 2 and "--metric 'nope'" in err and "brier" in err and "acc_avg" in err
