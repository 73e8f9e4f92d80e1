"""The pruning callback inside a real Hugging Face Trainer, on tiny random models."""

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from mgpp import preset
from mgpp.callback import PruningCallback
from mgpp.methods import PruningMethod
from mgpp.loggers import MemoryLogger
from mgpp.pruning import TargetSelector, num_to_prune
from mgpp.training_log import TrainingLogCallback

from conftest import VOCAB, tiny_bert

STEPS, BATCH, N = 24, 8, 64


def random_classification_data(n=N, seq=16):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (n, seq), generator=g)
    labels = (ids[:, 0] % 2).tolist()  # learnable signal
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * seq] * n, "labels": labels})


def make_trainer(tmp_path, model, callbacks=(), steps=STEPS, **overrides):
    args = dict(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=1e-3,
        logging_steps=6, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
        max_grad_norm=1.0,
    )
    args.update(overrides)
    return Trainer(model=model, args=TrainingArguments(**args), train_dataset=random_classification_data(),
                   callbacks=list(callbacks))


def run(tmp_path, method, extra=(), **overrides):
    """Train with ``method``; the third value is what the loggers received (a MemoryLogger)."""
    model = tiny_bert()
    pruning = PruningCallback(method, train_size=N)
    trainer = make_trainer(tmp_path, model, extra, **overrides)
    pruning.attach(trainer)
    memory = MemoryLogger()
    trainer.add_callback(TrainingLogCallback(memory, pruning, histogram_every=0))
    trainer.train()
    return model, pruning, memory


SCHEDULE = dict(t_i=4, t_f=16, prune_every=3)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("gmp", SCHEDULE),
        ("l2", SCHEDULE),
        ("mgpp", dict(SCHEDULE, sigma0_sq=1e-6, sigma1_sq=0.05, lam=1e-4)),
        ("pa", dict(t_f=16, sigma0_sq=1e-6, sigma1_sq=0.05, lam=1e-4)),
    ],
)
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_presets_end_at_target_sparsity(tmp_path, name, kwargs, sparsity):
    model, pruning, memory = run(tmp_path, preset(name, sparsity=sparsity, **kwargs))
    targets = pruning.targets
    zeros = sum(targets.zeros_per_tensor())
    assert zeros == num_to_prune(sparsity, targets.numel)
    logged = [r for r in memory.records if r["kind"] == "scalars" and "train/loss" in r]
    assert logged, "no training log"
    last = logged[-1]
    for key in ["target_sparsity", "zero_fraction_now", "threshold", "prior_crossover", "prior_weight", "prior_penalty"]:
        assert "pruning/" + key in last
    assert last["pruning/zero_fraction_now"] == pytest.approx(sparsity, abs=1e-4)
    assert last["pruning/target_sparsity"] == sparsity
    assert last["pruning/threshold"] > 0
    # the smallest survivor (right after a prune, or under PA's fixed mask)
    survivors = torch.cat([p.detach().abs().flatten() for p in targets.params])
    assert last["pruning/kept_min_magnitude"] == pytest.approx(float(survivors[survivors > 0].min()))
    if name != "pa":  # pruned at this very step: at or above every pruned score
        assert last["pruning/kept_min_magnitude"] >= last["pruning/threshold"]


def test_dense_never_zeroes_anything(tmp_path):
    model, pruning, memory = run(tmp_path, preset("dense"))
    assert sum(pruning.targets.zeros_per_tensor()) == 0
    assert max(memory.scalars("train/loss")) == STEPS


class RecordAfterStep(TrainerCallback):
    """Copies which target weights are zero after every optimizer step."""

    def __init__(self, pruning):
        self.pruning, self.zero_masks = pruning, {}

    def on_step_end(self, args, state, control, **kwargs):
        self.zero_masks[state.global_step] = [p.detach() == 0 for p in self.pruning.targets.params]


def test_pa_keeps_pruned_weights_at_zero_after_one_shot_prune(tmp_path):
    method = preset("pa", sparsity=0.7, t_f=10, sigma0_sq=1e-6, sigma1_sq=0.05, lam=1e-4)
    pruning = PruningCallback(method, train_size=N)
    recorder = RecordAfterStep(pruning)
    memory = MemoryLogger()
    trainer = make_trainer(tmp_path, tiny_bert(), [recorder, TrainingLogCallback(memory, pruning, histogram_every=0)])
    pruning.attach(trainer)
    trainer.train()
    masks = recorder.zero_masks
    assert all(sum(int(m.sum()) for m in masks[t]) == 0 for t in range(1, 10))  # nothing pruned while annealing
    pruned_at_tf = masks[10]
    assert sum(int(m.sum()) for m in pruned_at_tf) == num_to_prune(0.7, pruning.targets.numel)
    for t in range(11, STEPS + 1):  # the mask is fixed: exactly the same weights are zero
        assert all(torch.equal(a, b) for a, b in zip(masks[t], pruned_at_tf)), t
    # the prior acts while annealing and is off in the retraining (paper line 102: the loss only)
    logged = {r["step"]: r for r in memory.records if "pruning/prior_weight" in r}
    assert logged[6]["pruning/prior_weight"] == 1.0 and logged[6]["pruning/prior_penalty"] > 0
    assert [logged[t]["pruning/prior_weight"] for t in (12, 18, 24)] == [0.0, 0.0, 0.0]
    assert all(logged[t]["pruning/prior_penalty"] == 0.0 for t in (12, 18, 24))


def test_pa_retraining_adds_no_prior_gradient():
    method = preset("pa", sparsity=0.5, t_f=10, sigma0_sq=1e-6, sigma1_sq=0.05, lam=1e-4)
    model = tiny_bert()
    pruning = PruningCallback(method, train_size=N)
    pruning.setup(model, total_steps=20)
    for t, expect_prior in ((10, True), (11, False), (20, False)):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        pruning.add_prior_grad(t)
        assert any(bool(p.grad.abs().sum() > 0) for p in pruning.targets.params) == expect_prior, t


def test_regrowth_measures_the_weights_the_previous_prune_zeroed():
    method = preset("gmp", sparsity=0.5, t_i=2, t_f=20, prune_every=4)
    model = tiny_bert()
    pruning = PruningCallback(method, train_size=N)
    pruning.setup(model, total_steps=30)
    pruning.prune(6)  # first prune of the ramp
    zeroed = [p.detach() == 0 for p in pruning.targets.params]
    assert sum(int(z.sum()) for z in zeroed) > 0 and pruning.regrowth == {}
    with torch.no_grad():  # "the optimizer" moves every zeroed weight by -0.01, one of them by 0.5
        for p, z in zip(pruning.targets.params, zeroed):
            p[z] = -0.01
        first = pruning.targets.params[0]
        first[zeroed[0]] = torch.where(torch.arange(int(zeroed[0].sum())) == 0, 0.5, -0.01)
    pruning.prune(7)  # not a pruning step: nothing measured
    assert pruning.regrowth == {}
    pruning.prune(10)
    count = sum(int(z.sum()) for z in zeroed)
    assert pruning.regrowth["regrowth_max"] == pytest.approx(0.5)
    assert pruning.regrowth["regrowth_mean"] == pytest.approx(((count - 1) * 0.01 + 0.5) / count, rel=1e-6)
    assert pruning.regrowth["regrowth_nonzero_fraction"] == 1.0
    assert pruning.metrics()["pruning/regrowth_max"] == pytest.approx(0.5)
    untracked = PruningCallback(method, train_size=N, track_regrowth=False)
    untracked.setup(tiny_bert(), total_steps=30)
    untracked.prune(6)
    untracked.prune(10)
    assert untracked.regrowth == {} and untracked._zeroed is None


def test_mgpp_pruned_weights_may_regrow_between_prunes(tmp_path):
    """Algorithm 1 keeps no mask: weights zeroed at one pruning step can come back before the next."""
    method = preset("mgpp", sparsity=0.5, t_i=4, t_f=20, prune_every=8, sigma0_sq=1e-6, sigma1_sq=0.05, lam=1e-4)
    pruning = PruningCallback(method, train_size=N)
    recorder = RecordAfterStep(pruning)
    trainer = make_trainer(tmp_path, tiny_bert(), [recorder])
    pruning.attach(trainer)
    trainer.train()
    zeros_at = {t: sum(int(m.sum()) for m in recorder.zero_masks[t]) for t in recorder.zero_masks}
    assert zeros_at[12] > 0 and zeros_at[13] < zeros_at[12]


def test_prior_gradient_is_added_after_clipping(tmp_path):
    """With the loss gradient clipped to ~0 and plain SGD (lr=1), one step moves a target weight by
    -eta/n * prior.grad(theta); had the prior been added before clipping it would be clipped away too."""
    sigma_sq, n = 0.05, 10
    method = preset("l2", sparsity=0.0, sigma1_sq=sigma_sq, t_i=0, t_f=1)
    model = tiny_bert()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    pruning = PruningCallback(method, train_size=n)
    trainer = make_trainer(tmp_path, model, steps=1, optim="sgd", learning_rate=1.0, max_grad_norm=1e-12,
                           weight_decay=0.0, lr_scheduler_type="constant")
    pruning.attach(trainer)
    trainer.train()
    for name, p in zip(pruning.targets.names, pruning.targets.params):
        expected = before[name] * (1 - 1.0 / (n * sigma_sq))
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-8)
    classifier = dict(model.named_parameters())["classifier.weight"]
    assert torch.allclose(classifier, before["classifier.weight"], atol=1e-8)  # untouched by the prior


def test_prior_gradient_value_and_warmup():
    """add_prior_grad adds eta(t)/n * grad(theta) to exactly the target weights."""
    method = preset("mgpp", sparsity=0.5, t_i=10, t_f=20, sigma0_sq=1e-6, sigma1_sq=0.05, lam=1e-4)
    model = tiny_bert()
    pruning = PruningCallback(method, train_size=100)
    pruning.setup(model, total_steps=30)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pruning.add_prior_grad(t=5)  # eta = 0.5
    for p in pruning.targets.params:
        torch.testing.assert_close(p.grad, 0.5 / 100 * method.prior.grad(p.detach()))
    assert (model.classifier.weight.grad == 0).all() and (model.bert.embeddings.word_embeddings.weight.grad == 0).all()


def test_patterns_matching_nothing_fail_before_training(tmp_path):
    method = PruningMethod(targets=TargetSelector(include=["no_such_layer"]))
    model = tiny_bert()
    trainer = make_trainer(tmp_path, model)
    PruningCallback(method, train_size=N).attach(trainer)
    with pytest.raises(ValueError, match="no_such_layer"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_schedule_longer_than_training_fails_before_training(tmp_path):
    trainer = make_trainer(tmp_path, tiny_bert())
    PruningCallback(preset("gmp", t_i=4, t_f=100), train_size=N).attach(trainer)
    with pytest.raises(ValueError, match="t_f=100"):
        trainer.train()
    assert trainer.state.global_step == 0


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_train_size_must_be_positive_int(bad):
    with pytest.raises(ValueError, match="train_size"):
        PruningCallback(preset("dense"), train_size=bad)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown method 'mpgg'"):
        preset("mpgg")


def test_resuming_after_pa_prune_rebuilds_the_fixed_mask():
    method = preset("pa", sparsity=0.5, t_f=10, sigma0_sq=1e-6, sigma1_sq=0.05, lam=1e-4)
    model = tiny_bert()
    first = PruningCallback(method, train_size=N)
    first.setup(model, total_steps=20)
    for t in range(1, 11):
        first.prune(t)
    zeros = [p.detach() == 0 for p in first.targets.params]
    resumed = PruningCallback(method, train_size=N)
    resumed.setup(model, total_steps=20, completed_steps=12)  # as on_train_begin after loading step 12
    with torch.no_grad():
        for p in resumed.targets.params:
            p.add_(1.0)  # an optimizer step moves every weight
    resumed.prune(13)
    assert all(torch.equal(p.detach() == 0, z) for p, z in zip(resumed.targets.params, zeros))
    fresh = PruningCallback(method, train_size=N)
    fresh.setup(tiny_bert(), total_steps=20, completed_steps=5)  # before t_f: no mask yet
    assert fresh.mask is None


def test_logging_asks_the_pruning_callback_and_leaves_the_trainers_logs_alone(tmp_path):
    """The Trainer's own log history carries no pruning keys (nothing is inserted into it); the
    loggers get train/, pruning/ and per-layer sparsity/ keys, each step once."""
    model, pruning, memory = run(tmp_path, preset("gmp", sparsity=0.5, **SCHEDULE))
    scalars = [r for r in memory.records if r["kind"] == "scalars"]
    train = [r for r in scalars if "train/loss" in r]
    assert {"train/learning_rate", "train/grad_norm", "pruning/zero_fraction_now", "pruning/sparsity_after_last_prune",
            "pruning/target_sparsity"} <= set(train[-1])
    assert not any(k in r for r in scalars for k in ("loss", "train_runtime"))  # prefixed; the summary aside
    steps = [r["step"] for r in train]
    assert len(steps) == len(set(steps)) == STEPS // 6
    assert train[-1]["pruning/sparsity_after_last_prune"] == num_to_prune(0.5, pruning.targets.numel) / pruning.targets.numel


def test_per_layer_sparsity_is_logged_right_after_each_prune_and_nothing_reads_0_before(tmp_path):
    """Logging every 5 steps, pruning every 3 from t_i=4 (then every step after t_f=16): each prune of
    the cubic phase is logged right after it, and after t_f one prune in 3 plus every logging step;
    the per-layer sparsities, weighted by size, are the schedule's target there. No threshold or
    kept-min key is logged before the first prune, and no per-layer value at a step that did not prune."""
    model, pruning, memory = run(tmp_path, preset("gmp", sparsity=0.8, **SCHEDULE), logging_steps=5)
    sizes = {n: p.numel() for n, p in zip(pruning.targets.names, pruning.targets.params)}
    layers = {}
    for r in memory.records:
        if r["kind"] == "scalars" and any(k.startswith("sparsity_after_prune/") for k in r):
            layers[r["step"]] = {k.split("/", 1)[1]: v for k, v in r.items() if k.startswith("sparsity_after_prune/")}
    assert sorted(layers) == [4, 7, 10, 13, 16, 19, 20, 23]  # every prune to t_f=16, then one in 3 and log step 20
    for step, per_layer in layers.items():
        assert set(per_layer) == set(sizes)
        pruned = sum(per_layer[n] * sizes[n] for n in sizes)
        assert pruned == pytest.approx(pruning.schedule.sparsity(step) * sum(sizes.values()), abs=len(sizes))
    scalars = [r for r in memory.records if r["kind"] == "scalars"]
    for r in scalars:
        if r["step"] < 4:
            assert not {"pruning/threshold", "pruning/kept_min_magnitude", "pruning/sparsity_after_last_prune"} & set(r)
    between = [r for r in scalars if r["step"] == 7]  # a prune step that is not a logging step: its own record
    assert between and between[0]["pruning/target_sparsity"] == pytest.approx(pruning.schedule.sparsity(7))
    assert between[0]["pruning/kept_min_magnitude"] >= between[0]["pruning/threshold"] > 0


def test_a_diverging_run_stops_at_the_step_it_diverges(tmp_path):
    """A NaN in the gradients stops training before the optimizer writes it into the weights."""

    class Poison(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if state.global_step + 1 == 5:
                model.bert.encoder.layer[0].output.dense.weight.grad[0, 0] = float("nan")

    model = tiny_bert()
    pruning = PruningCallback(preset("mgpp", sparsity=0.5, **SCHEDULE), train_size=N)
    trainer = make_trainer(tmp_path, model, [Poison()])
    pruning.attach(trainer)  # after Poison: it sees the poisoned gradient
    with pytest.raises(FloatingPointError, match="non-finite gradients at optimizer step 5"):
        trainer.train()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_preset_composes_mgpps_configs_inside_another_hydra_context(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    (tmp_path / "other.yaml").write_text("x: 1\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        method = preset("l2", sigma1_sq=0.1)
        assert method.prior.sigma_sq == 0.1
        assert compose("other").x == 1  # the outer context is back
    assert not GlobalHydra.instance().is_initialized()


def test_a_resumed_pa_run_keeps_its_original_calibration(tmp_path):
    """PA's sigma0_sq_init is measured on the pretrained weights; a run resumed from a checkpoint
    reuses it (saved with the checkpoint) instead of measuring the half-trained weights again."""
    method = preset("pa", sparsity=0.8, t_i=0, t_f=10, sigma0_sq=1e-6, sigma1_sq=0.05, lam=1e-4)
    fake = type("Trainer", (), {"args": type("Args", (), {"output_dir": str(tmp_path)})()})()
    first = PruningCallback(method, train_size=N)
    first.trainer = fake
    model = tiny_bert()
    first.setup(model, total_steps=20)
    (tmp_path / "checkpoint-4").mkdir()
    first.on_save(fake.args, type("State", (), {"global_step": 4})(), None)
    with torch.no_grad():
        for p in first.targets.params:
            p.mul_(0.5)  # training has shrunk the weights since
    resumed = PruningCallback(method, train_size=N)
    resumed.trainer = fake
    resumed.setup(model, total_steps=20, completed_steps=4)
    assert resumed.schedule.sigma0_sq_init == first.schedule.sigma0_sq_init
    fresh = PruningCallback(method, train_size=N)
    fresh.setup(model, total_steps=20)  # no checkpoint: calibrated on the weights at hand, which differ now
    assert fresh.schedule.sigma0_sq_init != first.schedule.sigma0_sq_init


def sealed_run(tmp_path, limit=3, crash_at=None):
    """A PA run (its schedule writes mgpp_schedule.json into checkpoints) saving every 8 of 24 steps,
    sealed as train() seals them; ``crash_at``: killed during the write of that checkpoint."""
    from mgpp.checkpoints import SealCheckpoints

    trainer = make_trainer(tmp_path / "checkpoints", tiny_bert(), steps=24, save_strategy="steps", save_steps=8,
                           save_total_limit=limit)
    PruningCallback(preset("pa", sparsity=0.5, t_i=4, t_f=16), train_size=N).attach(trainer)
    trainer.add_callback(SealCheckpoints())
    if crash_at is not None:
        real = trainer._save_rng_state

        def killed(output_dir):
            if output_dir.endswith(f"checkpoint-{crash_at}"):
                raise KeyboardInterrupt("killed during the write")
            real(output_dir)

        trainer._save_rng_state = killed
    return trainer


def test_every_checkpoint_is_sealed_with_every_file_it_holds(tmp_path):
    """on_save comes after the Trainer wrote and rotated the checkpoint and after the pruning callback
    wrote its calibration: the seal lists every file, and each kept checkpoint verifies."""
    import json

    from mgpp.checkpoints import MANIFEST_FILE, checkpoint_problem
    from mgpp.run_folder import RunFolder

    sealed_run(tmp_path, limit=2).train()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["checkpoint-16", "checkpoint-24"]  # rotated before the seal
    for name in names:
        folder = tmp_path / "checkpoints" / name
        sealed = set(json.loads((folder / MANIFEST_FILE).read_text())["files"])
        assert sealed == {p.name for p in folder.iterdir() if p.name != MANIFEST_FILE}
        assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
                "mgpp_schedule.json"} <= sealed
        assert checkpoint_problem(folder) is None
    assert RunFolder(tmp_path).last_checkpoint().endswith("checkpoint-24")


def test_transformers_release_was_checked_for_the_seal_contract():
    """The seal relies on on_save following a complete checkpoint; a release it was not checked on fails here
    (run the test above on it, then add it to CHECKED_TRANSFORMERS)."""
    import transformers

    from mgpp.checkpoints import CHECKED_TRANSFORMERS

    assert ".".join(transformers.__version__.split(".")[:2]) in CHECKED_TRANSFORMERS, transformers.__version__


@pytest.mark.parametrize("damage,named", [
    ("flip", "model.safetensors differs from its seal"),  # one byte of the weights changed on disk
    ("truncate", "optimizer.pt holds"),  # a partial copy
    ("remove", "rng_state.pth is missing"),
])
def test_a_damaged_checkpoint_is_named_and_the_newest_intact_one_resumed(tmp_path, caplog, damage, named):
    from mgpp.run_folder import RunFolder

    sealed_run(tmp_path).train()
    newest = tmp_path / "checkpoints" / "checkpoint-24"
    if damage == "flip":
        path = newest / "model.safetensors"
        blob = bytearray(path.read_bytes())
        blob[-5] ^= 0x40  # a mantissa bit of the last tensor: the file's size and header stay right
        path.write_bytes(bytes(blob))
    elif damage == "truncate":
        path = newest / "optimizer.pt"
        path.write_bytes(path.read_bytes()[:-100])
    else:
        (newest / "rng_state.pth").unlink()
    folder = RunFolder(tmp_path)
    assert folder.last_checkpoint().endswith("checkpoint-16")
    assert f"skipping damaged checkpoint-24 ({named}" in caplog.text
    for step in (8, 16):
        (tmp_path / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")  # changed too
    with pytest.raises(ValueError, match="no intact checkpoint to resume from.*checkpoint-8: trainer_state.json "
                                         "holds .*resume=false"):
        folder.last_checkpoint()


def test_a_checkpoint_cut_during_its_write_is_skipped(tmp_path):
    """A kill during the write leaves checkpoint-16 without a seal: never resumed while sealed ones exist."""
    from mgpp.run_folder import RunFolder

    with pytest.raises(KeyboardInterrupt):
        sealed_run(tmp_path, crash_at=16).train()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-16", "checkpoint-8"]
    assert RunFolder(tmp_path).last_checkpoint().endswith("checkpoint-8")


def test_a_complete_checkpoint_killed_before_its_seal_is_not_resumed_beside_sealed_ones(tmp_path, caplog):
    """Killed between the Trainer's write and the seal: checkpoint-16 looks complete, but unsealed beside
    sealed ones it is not trusted."""
    from mgpp.checkpoints import SealCheckpoints, checkpoint_problem
    from mgpp.run_folder import RunFolder

    class KilledAt16(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 16:
                raise KeyboardInterrupt("killed before the seal")

    trainer = sealed_run(tmp_path)
    seal = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, SealCheckpoints))
    trainer.remove_callback(seal)
    trainer.add_callback(KilledAt16())
    trainer.add_callback(seal)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert checkpoint_problem(tmp_path / "checkpoints" / "checkpoint-16") == "not sealed"  # complete, no seal
    assert RunFolder(tmp_path).last_checkpoint().endswith("checkpoint-8")
    assert "skipping damaged checkpoint-16 (not sealed: its write was cut short)" in caplog.text


def test_checkpoints_of_an_older_mgpp_are_checked_for_completeness(tmp_path, caplog):
    """A folder with no sealed checkpoint at all (written before the seals): each is checked for what its
    structure shows, the newest complete one resumed with a warning; a truncated torch file is named."""
    from mgpp.checkpoints import MANIFEST_FILE
    from mgpp.run_folder import RunFolder

    sealed_run(tmp_path).train()
    for manifest in (tmp_path / "checkpoints").glob(f"*/{MANIFEST_FILE}"):
        manifest.unlink()
    optimizer = tmp_path / "checkpoints" / "checkpoint-24" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:1000])
    assert RunFolder(tmp_path).last_checkpoint().endswith("checkpoint-16")
    assert "checkpoint-24 (not sealed; optimizer.pt is truncated or damaged" in caplog.text
    assert "checkpoint-16 has no seal" in caplog.text


def test_resuming_onto_non_finite_weights_is_refused():
    method = preset("gmp", sparsity=0.5, **SCHEDULE)
    model = tiny_bert()
    with torch.no_grad():
        model.bert.encoder.layer[1].intermediate.dense.weight[3, 3] = float("nan")  # bytes flipped on disk
    with pytest.raises(ValueError, match="checkpoint of step 12 holds non-finite weights"):
        PruningCallback(method, train_size=N).setup(model, total_steps=24, completed_steps=12)


def test_sparse_transfer_logs_its_frozen_sparsity_not_zeros(tmp_path):
    """A model that arrives pruned (sparse transfer, a fixed mask from step 0): the per-layer curves and
    the target read the frozen sparsity at every histogram step, never 0 as if dense."""
    model = tiny_bert()
    selected = TargetSelector().select(model)
    with torch.no_grad():
        for p in selected.params:
            p[: p.shape[0] // 2] = 0  # half of every target tensor pruned upstream
    pruning = PruningCallback(preset("sparse_transfer", sparsity=0.5), train_size=N)
    trainer = make_trainer(tmp_path, model)
    pruning.attach(trainer)
    memory = MemoryLogger()
    trainer.add_callback(TrainingLogCallback(memory, pruning, histogram_every=6))
    trainer.train()
    layer_steps = sorted({r["step"] for r in memory.records if r["kind"] == "scalars"
                         and any(k.startswith("sparsity_after_prune/") for k in r)})
    assert layer_steps == [6, 12, 18, 24]
    last = [r for r in memory.records if r["kind"] == "scalars" and "train/loss" in r][-1]
    assert last["pruning/target_sparsity"] == 0.5 and last["pruning/sparsity_after_last_prune"] == pytest.approx(0.5)
    assert "pruning/threshold" not in last  # it never pruned
