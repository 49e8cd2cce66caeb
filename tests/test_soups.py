"""Model soups checked against hand arithmetic and torch.optim.swa_utils; the greedy soup on a
hand example; the choice never reads a test split."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from clipdg_nb.averaging import greedy_soup, soup_variants, uniform_soup


def _runs(n=3):
    """State dicts of n differently trained copies of one small net (float params and buffers, an
    integer buffer), as a sweep over seeds or learning rates would give."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    models = []
    for i in range(n):
        model = copy.deepcopy(base)
        g = torch.Generator().manual_seed(i)
        opt = torch.optim.SGD(model.parameters(), lr=0.1 * (i + 1))
        for _ in range(3 + i):  # a different number of steps: num_batches_tracked differs too
            x, y = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        models.append(model)
    return models


def test_uniform_soup_is_the_hand_average_of_its_ingredients():
    models = _runs(3)
    states = [m.state_dict() for m in models]
    assert not torch.equal(states[0]["0.weight"], states[1]["0.weight"])  # ingredients really differ
    soup = uniform_soup(states)
    assert set(soup) == set(states[0])
    for key, value in soup.items():
        if torch.is_floating_point(value):
            hand = (states[0][key] + states[1][key] + states[2][key]) / 3
            torch.testing.assert_close(value, hand, rtol=0, atol=1e-7)
            assert value.dtype == torch.float32
        else:  # num_batches_tracked: the first ingredient's, as the module's other helpers keep non-float entries
            assert torch.equal(value, states[0][key])
    # an independent reference: AveragedModel's equal-weight average of the same models
    ref = AveragedModel(models[0], use_buffers=True)
    for m in models:  # a new AveragedModel has averaged nothing yet
        ref.update_parameters(m)
    assert int(ref.n_averaged) == 3
    for key, value in ref.module.state_dict().items():
        if torch.is_floating_point(value):
            torch.testing.assert_close(soup[key], value, rtol=0, atol=1e-6)
    # the soup is a copy: changing it leaves the ingredients alone
    soup["0.weight"].add_(1.0)
    assert not torch.equal(soup["0.weight"], uniform_soup(states)["0.weight"])
    # lazily loaded ingredients give the same soup
    lazy = uniform_soup([lambda s=s: s for s in states])
    assert all(torch.equal(lazy[k], v) for k, v in uniform_soup(states).items())


def test_half_precision_ingredients_are_averaged_in_float32_and_cast_back():
    # a float16 sum of these overflows (65504 is its largest value); a float32 one does not
    a = {"w": torch.tensor([40000.0, 0.1], dtype=torch.float16)}
    b = {"w": torch.tensor([40000.0, 0.3], dtype=torch.float16)}
    c = {"w": torch.tensor([40032.0, 0.2], dtype=torch.float16)}
    assert torch.isinf(a["w"] + b["w"] + c["w"]).any()
    soup = uniform_soup([a, b, c])
    assert soup["w"].dtype == torch.float16 and torch.isfinite(soup["w"]).all()
    hand = ((a["w"].float() + b["w"].float() + c["w"].float()) / 3).half()
    assert torch.equal(soup["w"], hand)


def _w(x):
    return {"w": torch.tensor([float(x)])}


def test_greedy_soup_keeps_and_rejects_as_by_hand():
    target = 1.0
    seen = []

    def evaluate(state):  # closer to the target is better
        seen.append(float(state["w"]))
        return -abs(float(state["w"]) - target)

    # given out of order: the greedy soup sorts by the candidates' own scores, best first
    candidates = [("c", _w(10), 0.7), ("a", _w(0), 0.9), ("e", _w(1), 0.5), ("b", _w(2), 0.8), ("d", _w(-1), 0.6)]
    soup = greedy_soup(candidates, evaluate)
    # a: w=0, score -1 | +b: mean 1, score 0 >= -1, kept | +c: mean 4, -3, rejected
    # +d: mean 1/3, -2/3, rejected | +e: mean 1, 0 >= 0 (a tie), kept
    assert [t["name"] for t in soup.trace] == ["a", "b", "c", "d", "e"]
    assert [t["kept"] for t in soup.trace] == [True, True, False, False, True]
    assert [t["score"] for t in soup.trace] == pytest.approx([-1, 0, -3, -2 / 3, 0])
    assert seen == pytest.approx([0, 1, 4, 1 / 3, 1])
    assert soup.ingredients == ["a", "b", "e"] and soup.score == 0
    assert torch.equal(soup.state["w"], uniform_soup([_w(0), _w(2), _w(1)])["w"])
    # one candidate: the soup is that model
    only = greedy_soup([("a", _w(3), 0.1)], evaluate)
    assert only.ingredients == ["a"] and float(only.state["w"]) == 3


def test_soup_choice_never_reads_a_test_split():
    calls = []

    def score_on(state, split):
        calls.append(split)
        return -abs(float(state["w"]) - 1.0)

    candidates = [("lr=1e-3", _w(0), 0.9), ("lr=1e-4", _w(2), 0.8), ("lr=1e-5", _w(10), 0.7)]
    soups = soup_variants(candidates, score_on, "id_val")
    assert set(calls) == {"id_val"} and len(calls) == 1 + 3  # the uniform soup, then each greedy step
    assert set(soups) == {"uniform_soup", "greedy_soup"}
    assert soups["uniform_soup"].ingredients == ["lr=1e-3", "lr=1e-4", "lr=1e-5"]
    assert float(soups["uniform_soup"].state["w"]) == pytest.approx(4) and soups["uniform_soup"].score == -3
    assert soups["greedy_soup"].ingredients == ["lr=1e-3", "lr=1e-4"]
    calls.clear()
    soup_variants(candidates, score_on, "val")
    assert set(calls) == {"val"}
    for split in ("test", "id_test"):
        with pytest.raises(ValueError, match="never a test split"):
            soup_variants(candidates, score_on, split)


@pytest.mark.parametrize("call,match", [
    (lambda: uniform_soup([]), "at least one"),
    (lambda: uniform_soup([_w(1), {"v": torch.tensor([1.0])}]), "keys differ"),
    (lambda: uniform_soup([_w(1), {"w": torch.tensor([1.0, 2.0])}]), "shape"),
    (lambda: uniform_soup([_w(1), {"w": torch.tensor([1])}]), "kind"),
    (lambda: greedy_soup([], lambda s: 0.0), "at least one"),
    (lambda: greedy_soup([("a", _w(1), 0.5), ("a", _w(2), 0.4)], lambda s: 0.0), "unique"),
    (lambda: greedy_soup([("a", _w(1), float("nan"))], lambda s: 0.0), "score"),
    (lambda: greedy_soup([("a", _w(1), 0.5)], lambda s: float("nan")), "finite"),
])
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# The soup stage on the tiny model: runs that kept their weights -> uniform and greedy soups
# ---------------------------------------------------------------------------------------------

def _ingredient_runs(root, run_kwargs, method, lrs, **extra):
    from clipdg_nb import methods
    from clipdg_nb.config import FinetuneConfig
    from clipdg_nb.runs import Run
    params = dict(root_dir=str(root), method=method, text_mode="frozen", epochs=2, swa=False, fraction=0.25,
                  keep_weights=True, **run_kwargs)
    cfgs = [FinetuneConfig(**{**params, **extra}, lr=lr) for lr in lrs]
    return [(methods.run(cfg, progress=False), Run.of(cfg)) for cfg in cfgs]


@pytest.mark.parametrize("method,extra", [("finetune", dict(text_mode="trainable", swa=True, swa_last_k=1, train_blocks=1)),
                                          ("vision_only", dict(ema_decay=0.9))])
def test_checkpoint_estimate_is_the_largest_checkpoint_written(easy_root, run_kwargs, monkeypatch, method, extra):
    """`train.checkpoint_estimate` (the disk a grid's checkpoints take, printed before it runs) is
    the size of the last checkpoint a run writes, less its header, step counts and RNG state (and with
    the text tower trained, the Adam moments of the prompts' token rows: 0.24 % here, 0.06 % of ViT-B/32's)."""
    from clipdg_nb import methods, train
    from clipdg_nb.config import FinetuneConfig

    sizes, real = [], train.save_checkpoint
    monkeypatch.setattr(train, "save_checkpoint", lambda path, *a: (real(path, *a), sizes.append(path.stat().st_size)))
    cfg = FinetuneConfig(root_dir=str(easy_root), method=method, epochs=2, fraction=0.25, **{**run_kwargs, **extra})
    methods.run(cfg, progress=False)
    assert len(sizes) == 2 and sizes[-1] == max(sizes)
    estimate = train.checkpoint_estimate(cfg)
    assert 0 <= sizes[-1] - estimate < 64 * 1024 + 0.004 * estimate


@pytest.mark.parametrize("method", ["vision_only", "finetune"])
def test_soup_stage_on_the_tiny_model(easy_root, run_kwargs, monkeypatch, method):
    from safetensors.torch import load_file

    from clipdg_nb import evaluate, methods, soups, train
    from clipdg_nb.runs import WEIGHTS_FILE
    from clipdg_nb.data import load_dataset

    runs = _ingredient_runs(easy_root, run_kwargs, method, [3e-3, 1e-3, 3e-4])
    for record, run in runs:  # each kept its final weights, in float16
        kept = load_file(str(run.path / WEIGHTS_FILE))
        assert record["kept_weights"]["file"] == WEIGHTS_FILE
        assert {v.dtype for v in kept.values() if torch.is_floating_point(v)} == {torch.float16}
        size = record["kept_weights"]["bytes"]
        tensors = sum(v.numel() * v.element_size() for v in kept.values())
        assert 0 <= size - tensors < 64 * 1024  # the file: its tensors and a header
        # the estimate printed before anything runs (model built on the meta device) is the kept tensors' size
        from clipdg_nb.config import FinetuneConfig, from_params
        assert train.kept_weights_estimate(from_params(FinetuneConfig, record["params"])) == tensors

    read, state = [], {"choosing": False}
    real_evaluate, real_variants = evaluate.evaluate_logits, soups.soup_variants

    def spy_evaluate(dataset, indices, logits, split):
        read.append((split, state["choosing"]))
        return real_evaluate(dataset, indices, logits, split)

    def spy_variants(*args, **kwargs):
        state["choosing"] = True
        try:
            return real_variants(*args, **kwargs)
        finally:
            state["choosing"] = False
    monkeypatch.setattr(evaluate, "evaluate_logits", spy_evaluate)
    monkeypatch.setattr(methods, "evaluate_logits", spy_evaluate)  # the final evaluation: `methods.Context.scored`
    monkeypatch.setattr(soups, "soup_variants", spy_variants)
    record = soups.make_soups([run.path for _, run in runs])

    assert {split for split, choosing in read if choosing} == {"id_val"}  # the choice reads id_val only
    assert {"id_test", "test"} <= {split for split, _ in read}  # evaluated, after the choice
    names = [r["run_id"] for r, _ in runs]
    assert record["kind"] == "soup" and record["method"] == method and record["seed"] == 0 and record["lr"] is None
    assert sorted(record["soups"]["uniform_soup"]["ingredients"]) == sorted(names)
    greedy = record["soups"]["greedy_soup"]
    assert greedy["ingredients"][0] == max(record["selection"]["ingredient_scores"],
                                           key=record["selection"]["ingredient_scores"].get)
    assert [t["name"] for t in greedy["trace"] if t["kept"]] == greedy["ingredients"]
    assert greedy["score"] >= max(record["selection"]["ingredient_scores"].values())  # greedy never drops on id_val
    assert set(record["variants"]) == {"uniform_soup", "greedy_soup"} and record["metrics"] == record["variants"]["greedy_soup"]
    assert set(record["calibration"]) == {"uniform_soup", "greedy_soup"}

    # the record's numbers are WILDS's own eval on the saved predictions, for both soups
    soup_run = soups.Run(record_path := soups.soup_run([r for r, _ in runs]).path)
    assert record_path.name == record["run_id"]
    ds = load_dataset("fmow", easy_root)
    for variant in ("greedy_soup", "uniform_soup"):
        for split in ("id_val", "id_test", "val", "test"):
            preds = soup_run.predictions(split, variant=variant)
            assert record["variants"][variant][split] == pytest.approx(
                evaluate.wilds_metrics(ds, preds["idx"], preds["y_pred"]))

    # the uniform soup's predictions are those of the hand-averaged kept weights
    hand = {}
    states = [{k: v.float() if torch.is_floating_point(v) else v for k, v in
               load_file(str(run.path / WEIGHTS_FILE)).items()} for _, run in runs]
    for key, value in states[0].items():
        hand[key] = sum(s[key] for s in states) / 3 if torch.is_floating_point(value) else value
    params = dict(runs[0][0]["params"])
    from clipdg_nb.config import FinetuneConfig, from_params
    from clipdg_nb.devices import resolve_device
    from clipdg_nb.evaluate import predict_logits
    from clipdg_nb.images import Normalize
    from clipdg_nb.methods import Context, initial_model
    ctx = Context(from_params(FinetuneConfig, params), ds, resolve_device("cpu"))
    model, (mean, std, size) = initial_model(ctx, fit_probe=False)
    model.load_state_dict(hand)
    logits = predict_logits(model, ctx.images(ctx.indices("test"), size), Normalize(mean, std), ctx.device)
    saved = soup_run.predictions("test", variant="uniform_soup")
    assert (logits.argmax(1).numpy() == saved["y_pred"].to_numpy()).mean() > 0.99  # float ties aside
    # the kept weights are the run's final ones: they predict as its 'last' variant did (float16 aside)
    model.load_state_dict(states[0])
    logits = predict_logits(model, ctx.images(ctx.indices("test"), size), Normalize(mean, std), ctx.device)
    last = runs[0][1].predictions("test", variant="last")
    assert (logits.argmax(1).numpy() == last["y_pred"].to_numpy()).mean() > 0.97

    # apart from the experiment's runs: never in their learning-rate selection unasked
    from clipdg_nb.runs import load_records
    from clipdg_nb.paths import experiment_dir
    assert record["run_id"] not in {r["run_id"] for r in load_records(experiment_dir(run_kwargs["output_dir"], "scratch"))}
    assert [r["run_id"] for r in soups.load_soups(run_kwargs["output_dir"], "scratch")] == [record["run_id"]]

    # finished: returned as it is
    stamp = (record_path / "result.json").stat().st_mtime_ns
    assert soups.make_soups([run.path for _, run in runs]) == record
    assert (record_path / "result.json").stat().st_mtime_ns == stamp


def test_soup_stage_names_what_is_wrong(easy_root, run_kwargs, tmp_path):
    from clipdg_nb import methods, soups
    from clipdg_nb.config import FinetuneConfig
    from clipdg_nb.runs import Run

    cfg = FinetuneConfig(root_dir=str(easy_root), method="vision_only", text_mode="frozen", lr=1e-3, epochs=1,
                         swa=False, fraction=0.25, **run_kwargs)
    record = methods.run(cfg, progress=False)
    assert "kept_weights" not in record and not (Run.of(cfg).path / "weights").exists()  # only where asked
    (kept_record, kept), = _ingredient_runs(easy_root, run_kwargs, "vision_only", [3e-3], epochs=1)
    with pytest.raises(FileNotFoundError, match="keep_weights=True"):
        soups.make_soups([kept.path, Run.of(cfg).path])
    # 05's check before any training: the run its config would read back kept none; force (retrain) passes
    wanted = [FinetuneConfig(**{**cfg.params(), "keep_weights": True})]
    with pytest.raises(FileNotFoundError, match=rf"run {Run.of(cfg).id} kept no weights .*papermill -p force True"):
        soups.check_kept_weights(wanted)
    soups.check_kept_weights(wanted, force=True)
    other = FinetuneConfig(**{**cfg.params(), "fraction": 0.5, "keep_weights": True})
    methods.run(other, progress=False)
    with pytest.raises(ValueError, match="'fraction'"):
        soups.make_soups([kept.path, Run.of(other).path])
    with pytest.raises(ValueError, match="at least 2"):
        soups.make_soups([kept.path])
    with pytest.raises(FileNotFoundError, match="no finished run"):
        soups.make_soups([kept.path, tmp_path / "nothing"])


def _record(run_id, sha256, created_at="2024-01-01T00:00:00+00:00"):
    params = {"dataset": "fmow", "method": "finetune", "fraction": 0.5, "select_split": "id_val", "select_metric": None,
              "seed": 0, "output_dir": "/nowhere"}
    return {"run_id": run_id, "experiment": "e", "created_at": created_at, "kept_weights": {"sha256": sha256},
            "params": params}


def test_a_soup_is_named_by_its_ingredients_content_and_rule():
    from clipdg_nb import soups

    a, b = _record("a", "1" * 64), _record("b", "2" * 64)
    name = soups.soup_run([a, b]).path.name
    assert soups.soup_identity([b, a])["ingredients"] == {"a": "1" * 64, "b": "2" * 64}
    assert soups.soup_identity([a, b])["rule"] == ["uniform_soup", "greedy_soup"]
    # remade with the same bytes: the same soup (no timestamp in its identity); with other bytes: another soup
    assert soups.soup_run([b, {**a, "created_at": "2025-06-01T00:00:00+00:00"}]).path.name == name
    assert soups.soup_run([a, {**b, "kept_weights": {"sha256": "3" * 64}}]).path.name != name


def test_damaged_kept_weights_make_no_soup_and_a_remade_ingredient_retires_its_soups(easy_root, run_kwargs):
    import hashlib

    from clipdg_nb import soups
    from clipdg_nb.analysis import weight_averaging as wa
    from clipdg_nb.paths import write_json
    from clipdg_nb.runs import RESULT_FILE, WEIGHTS_FILE

    runs = _ingredient_runs(easy_root, run_kwargs, "vision_only", [3e-3, 1e-3], epochs=1, eval_splits=["id_val"],
                            save_predictions=False)
    (record, run), out = runs[1], run_kwargs["output_dir"]
    path = run.path / WEIGHTS_FILE
    good = path.read_bytes()
    assert record["kept_weights"]["sha256"] == hashlib.sha256(good).hexdigest()
    flipped = bytearray(good)
    for i in range(16):  # one bit of 16 float16 values near the end (tensor data, past the header)
        flipped[-2 * (97 * i + 1)] ^= 0x40
    for damaged in (bytes(flipped), good[: len(good) // 2]):  # flipped bits; truncated
        path.write_bytes(damaged)
        with pytest.raises(ValueError, match=f"run {record['run_id']}: .*damaged.*force=True"):
            soups.make_soups([r.path for _, r in runs])
        assert not soups.soups_dir(out, "scratch").exists()  # no soup, not even its folder

    path.write_bytes(good)
    first = soups.make_soups([r.path for _, r in runs])
    assert [s["run_id"] for s in soups.load_soups(out, "scratch")] == [first["run_id"]]
    # the ingredient remade with other weights (its file and its record's digest): the old soup is not
    # current any more, for load_soups and 04's readers alike, and the same runs now make another soup
    other = {k: v * 0.5 for k, v in run.kept_weights().items()}
    from safetensors.torch import save_file
    save_file({k: v.half() for k, v in other.items()}, str(path))
    write_json(run.path / RESULT_FILE, {**record, "kept_weights": {**record["kept_weights"],
                                                                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}})
    with pytest.warns(UserWarning, match=f"skipping 1 soups .*{first['run_id']}"):
        assert soups.load_soups(out, "scratch") == []
    with pytest.warns(UserWarning, match="remade, superseded or gone"):
        assert wa.load_soup_stage(out, "scratch")[1].empty
    second = soups.make_soups([r.path for _, r in runs])
    assert second["run_id"] != first["run_id"]
    with pytest.warns(UserWarning, match=first["run_id"]):
        assert set(wa.load_soup_stage(out, "scratch")[1]["run_id"]) == {second["run_id"]}
    with pytest.warns(UserWarning, match=first["run_id"]):
        assert {r["run_id"] for r in wa.soup_stage_records(out, "scratch") if r.get("kind") == "soup"} == {second["run_id"]}
    # a soup stage rerun with other lrs supersedes the runs it no longer makes: their soups are not
    # current any more, and no soup is made of them
    run.mark_superseded("scratch/soups/point", "rerun with other learning rates")
    with pytest.warns(UserWarning, match=second["run_id"]):
        assert soups.load_soups(out, "scratch") == []
    with pytest.raises(ValueError, match="superseded"):
        soups.make_soups([r.path for _, r in runs])
