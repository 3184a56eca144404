"""Config groups compose, schedules are pure functions of the step, and impossible settings fail at start-up with
one line naming the key (exit code 2, no traceback, no data generated)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF, OLD_EXECUTION, OLD_OFF, OLD_TRACKING, ROOT, experiments
from scalor.errors import ConfigError
from scalor.inference import inference_schedule
from scalor.schedules import Curriculum
from scalor.tasks import check_config, find_last_checkpoint, resolve_monitor, run


@pytest.mark.parametrize("name", experiments())
def test_every_experiment_composes_and_passes_the_checks(compose_cfg, name):
    cfg = compose_cfg(f"experiment={name}")
    assert cfg.name == name
    assert cfg.model.img_size == cfg.data.img_size
    assert check_config(cfg) is None


def test_default_is_the_quick_experiment_with_the_reference_optimiser_defaults(compose_cfg):
    cfg = compose_cfg(tiny=False)
    assert cfg.name == "quick" and cfg.task == "fit"
    assert cfg.trainer.accelerator == "auto" and cfg.trainer.gradient_clip_val == 1.0
    assert OmegaConf.select(cfg, "logger.wandb._target_").endswith("WandbLogger")
    opt = instantiate(cfg.optimizer)(params=[torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, torch.optim.RMSprop)
    plain = compose_cfg("experiment=grand_central", tiny=False)
    assert plain.optimizer.lr == 4e-5 and plain.scheduler is None
    for name in ("dsprites_easy", "dsprites_crowded", "mnist_crowded", "dsprites_dense"):  # easy's tuned settings
        tuned = compose_cfg(f"experiment={name}", tiny=False)
        assert tuned.optimizer._target_ == "torch.optim.Adam" and tuned.train_seq_len == 10, name
        assert tuned.model.sigma == 0.15 and tuned.model.reject_duplicates and tuned.model.no_background, name
    for name in ("dsprites_crowded", "mnist_crowded", "dsprites_dense"):  # the learning rate cut every 300 steps
        crowded = compose_cfg(f"experiment={name}", tiny=False)
        opt = instantiate(crowded.optimizer)(params=[torch.nn.Parameter(torch.zeros(1))])
        sched = instantiate(crowded.scheduler)(optimizer=opt)
        assert isinstance(sched, torch.optim.lr_scheduler.StepLR) and (sched.step_size, sched.gamma) == (300, 0.3)
    easy = compose_cfg("experiment=dsprites_easy", tiny=False)  # training rejects duplicates until step 600 only
    assert easy.curriculum.reject_duplicates_until == 600 and easy.curriculum.remove_detach_step == 600
    # offline tracks: backfilled, the better direction of 8 views; inside the fit, validation of one view
    assert dict(easy.tracker) == {"_target_": "scalor.tracking.PickTracker", "views": 8, "backfill": True,
                                  "copy_iou": 0.7}
    assert dict(easy.fit_val_tracker) == {**easy.tracker, "views": 1}
    assert easy.observe_frames == 5 and cfg.observe_frames == 3 and cfg.nll_samples == 1


def test_footage_without_an_experiment_takes_the_video_defaults_and_its_name(compose_cfg, tmp_path):
    clip = tmp_path / "clip.mp4"
    video = compose_cfg("data=video", f"data.path={clip}", tiny=False)
    assert video.name == "video" and video.data._target_.endswith("VideoDataModule")
    assert "num_train" not in video.data and (video.data.img_size, video.data.batch_size) == (128, 4)
    check_config(video)
    assert compose_cfg("~experiment").name == "dsprites"
    assert compose_cfg("experiment=dsprites_easy", "data=video", f"data.path={clip}").name == "dsprites_easy"
    assert compose_cfg().name == "quick" and compose_cfg().data.num_train == 8  # the quick set, made tiny


def test_track_of_a_checkpoint_file_is_named_after_its_experiment(compose_cfg, tmp_path):
    run(compose_cfg("experiment=dsprites_easy", "trainer.max_steps=1", "tracker=pick"))
    ckpt = find_last_checkpoint(tmp_path / "outputs", "dsprites_easy")
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]["experiment"] == "dsprites_easy"
    cfg = compose_cfg("task=track", f"ckpt_path={ckpt}", "data=video", f"data.path={tmp_path / 'clip.mp4'}")
    assert cfg.name == "dsprites_easy"
    assert compose_cfg("task=track", "ckpt_path=last", "data=video", "data.path=x.mp4").name == "video"


TYPE_ERRORS = {
    "trainer.max_steps=abc": "trainer.max_steps=abc has the wrong type: Trainer's max_steps takes a whole number",
    "data.batch_size=1.5": "data.batch_size=1.5 has the wrong type: DSpritesDataModule's batch_size takes a whole",
    "trainer.precision=33": "trainer.precision=33 has the wrong type: Trainer's precision takes one of 64, 32",
    "callbacks.best_checkpoint.save_top_k=all": "callbacks.best_checkpoint.save_top_k=all has the wrong type",
    "curriculum.tau_end=x": "curriculum.tau_end=x has the wrong type: Curriculum's tau_end takes a number",
    "data.shapes=3": "data.shapes=3 has the wrong type: DSpritesDataModule's shapes takes a list",
}


@pytest.mark.parametrize("override", list(TYPE_ERRORS))
def test_a_value_of_the_wrong_type_names_its_key_and_type(compose_cfg, override):
    with pytest.raises(ConfigError) as err:
        check_config(compose_cfg(override))
    assert str(err.value).startswith(TYPE_ERRORS[override]) and "\n" not in str(err.value)


def test_values_the_hints_take_pass(compose_cfg):
    for override in ("trainer.max_time=00:00:01:00", "trainer.precision=bf16-mixed", "trainer.devices=auto",
                     "data.batch_size=3", "model.sigma=1", "trainer.val_check_interval=0.5"):
        check_config(compose_cfg(override))


def test_the_model_options_default_to_the_fields_of_their_dataclass(compose_cfg):
    """conf/model composes SCALORConfig's defaults: with no experiment and no override, every option but the image
    size and the grid (interpolated from the data and grid groups) is the dataclass field's default, and the yaml
    writes nothing else."""
    from scalor.model import SCALORConfig

    cfg = compose_cfg("~experiment", tiny=False)
    composed = OmegaConf.to_container(cfg.model, resolve=True)
    assert composed.pop("_target_") == "scalor.model.SCALOR.from_config"
    interpolated = {"img_size": cfg.data.img_size, "num_cell_h": cfg.grid.num_cell_h, "num_cell_w": cfg.grid.num_cell_w}
    assert composed == {**SCALORConfig().to_dict(), **interpolated}
    assert set(OmegaConf.load(CONF / "model" / "scalor.yaml")) == {"defaults", "_target_", *interpolated}
    assert isinstance(instantiate(cfg.model, _convert_="all").config, SCALORConfig)  # as the yaml's _target_ builds it


def test_model_overrides_are_type_checked_as_the_config_composes(compose_cfg):
    from hydra.errors import ConfigCompositionException

    from scalor.model.config import check_overrides

    assert compose_cfg("model.sigma=1").model.sigma == 1.0  # a whole number is a number
    for override in ("model.sigma=abc", "model.conv_lstm=maybe", "model.glimpse_size=1.5"):
        with pytest.raises(ConfigCompositionException):
            compose_cfg(override)
    with pytest.raises(ConfigError) as err:  # the command line's check before Hydra composes (run.py, bench)
        check_overrides(["trainer.max_steps=abc", "model.sigma=0.1,abc"])  # each choice of a sweep
    assert str(err.value) == "model.sigma=abc has the wrong type: it takes a number; set model.sigma to a number."
    check_overrides(["model.sigma=interval(0.05,0.2)", "model.box_source=where", "~model.sigma", "model=scalor"])
    for override in ("+model.foo=1", "model.foo=1"):  # as an experiment file sets it: the config check names it
        with pytest.raises(ConfigError) as err:
            check_config(compose_cfg(override))
        assert str(err.value).startswith("model.foo is not a model option; the options are img_size, num_cell_h")


MODEL_CLI = {"model.sigma=abc": "error: model.sigma=abc has the wrong type: it takes a number; set model.sigma to a "
                                "number.",
             "model.foo=1": "error: model.foo is not a model option; the options are img_size, num_cell_h, "}


@pytest.mark.parametrize("override", list(MODEL_CLI))
def test_cli_model_override_of_the_wrong_type_or_no_option_is_one_line_and_exit_2(tmp_path, override):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "run.py", f"paths.output_root={tmp_path / 'out'}", override], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(MODEL_CLI[override]), proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("grid", ["4x4", "8x8", "16x16"])
def test_grid_group(compose_cfg, grid):
    cfg = compose_cfg(f"grid={grid}")
    side = int(grid.split("x")[0])
    assert (cfg.grid.num_cell_h, cfg.grid.num_cell_w) == (side, side)
    assert (cfg.model.num_cell_h, cfg.model.num_cell_w) == (side, side)


def test_strategy_and_logger_groups(compose_cfg):
    ddp_cpu = compose_cfg("strategy=ddp_cpu").trainer
    assert ddp_cpu.accelerator == "cpu" and ddp_cpu.devices == 2
    assert ddp_cpu.strategy.process_group_backend == "gloo"
    assert compose_cfg("strategy=ddp").trainer.accelerator == "gpu"
    assert compose_cfg("trainer=gpu").trainer.accelerator == "gpu"
    assert OmegaConf.select(compose_cfg("logger=csv"), "logger.csv._target_").endswith("CSVLogger")
    assert not compose_cfg("logger=none").logger


def test_search_and_launcher_configs_compose(compose_cfg):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hparams_search=optuna", "hydra/launcher=slurm", "trainer.devices=4",
                                           "hydra.launcher.partition=gpu"], return_hydra_config=True)
        assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.direction == "maximize"
        assert cfg.monitor.metric == "auto" and cfg.monitor.mode == "auto"  # val/mota (max) on dSprites
        assert set(cfg.hydra.sweeper.params) == {"optimizer.lr", "model.sigma", "model.size_anc",
                                                 "model.explained_ratio_threshold"}
        assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
        assert cfg.hydra.launcher.tasks_per_node == 4 and cfg.hydra.launcher.timeout_min > 0
        cfg = compose("config", overrides=["hydra/launcher=local"], return_hydra_config=True)
        assert cfg.hydra.launcher._target_.endswith("LocalLauncher")


def test_curricula(compose_cfg):
    ref = instantiate(OmegaConf.load(CONF / "curriculum" / "default.yaml"))
    assert ref == Curriculum()
    # reference conventions: tau from the step before the update, the rest from the step after it
    assert ref.at(0).tau == 1.0 and ref.at(20000).tau == pytest.approx(0.5) and ref.at(10**6).tau == 0.5
    assert ref.at(10000).tau == pytest.approx(0.5 ** 0.5)
    assert ref.at(0).z_pres_prior == pytest.approx(0.1 + (1e-3 - 0.1) / 500)
    assert ref.at(499).z_pres_prior == pytest.approx(1e-3)
    assert ref.at(29998).detach and not ref.at(29999).detach
    assert not ref.at(0).bg_alpha_curriculum

    composed = {name: instantiate(compose_cfg(f"curriculum={name}").curriculum) for name in ("bg_alpha", "none")}
    bg = composed["bg_alpha"]
    assert bg.at(0).bg_alpha_curriculum and bg.at(198).bg_alpha_curriculum and not bg.at(199).bg_alpha_curriculum
    none = composed["none"]
    assert none.at(0) == none.at(10**6)
    assert none.at(0).tau == 0.5 and none.at(0).z_pres_prior == pytest.approx(1e-3) and not none.at(0).detach


def test_sigma_schedule():
    assert Curriculum().at(0).sigma is None and Curriculum().at(10**6).sigma is None  # the model's sigma
    cur = Curriculum(sigma_start=0.15, sigma_end=0.1, sigma_anneal_begin=400, sigma_anneal_steps=400)
    # like the other schedules but the temperature, the value for the step after the update
    assert cur.at(0).sigma == 0.15 and cur.at(399).sigma == 0.15
    assert cur.at(599).sigma == pytest.approx(0.125) and cur.at(799).sigma == pytest.approx(0.1)
    assert cur.at(10**6).sigma == pytest.approx(0.1)
    assert Curriculum(sigma_start=0.2, sigma_end=0.1).at(0).sigma == 0.1  # no anneal steps: sigma_end from the start
    assert inference_schedule(cur).sigma == 0.1 and inference_schedule(Curriculum()).sigma is None


def test_duplicate_rejection_schedule():
    assert Curriculum().at(0).reject_duplicates and Curriculum().at(10**6).reject_duplicates  # throughout
    cur = Curriculum(reject_duplicates_until=600)
    assert cur.at(0).reject_duplicates and cur.at(598).reject_duplicates  # the step after the update, as sigma
    assert not cur.at(599).reject_duplicates and not cur.at(10**6).reject_duplicates


def test_curriculum_group_composes(compose_cfg):
    cfg = compose_cfg("curriculum=bg_alpha")
    assert cfg.curriculum.bg_alpha_curriculum and cfg.curriculum.tau_decay_steps == 20000
    cfg = compose_cfg("curriculum=none")
    assert instantiate(cfg.curriculum).at(0).tau == 0.5


def test_schedules_are_pure_functions_of_the_step():
    cur = Curriculum(bg_alpha_curriculum=True)
    forward = [cur.at(s) for s in range(0, 40000, 97)]
    backward = [cur.at(s) for s in reversed(range(0, 40000, 97))][::-1]
    assert forward == backward  # no hidden state: a resumed run sees the same values


def test_monitor_follows_ground_truth(compose_cfg):
    cfg = compose_cfg()
    assert resolve_monitor(cfg, type("DM", (), {"has_ground_truth": True})()) == "val/mota"
    assert cfg.monitor.mode == "max"
    cfg = compose_cfg()
    assert resolve_monitor(cfg, type("DM", (), {"has_ground_truth": False})()) == "val/neg_elbo"
    assert cfg.monitor.mode == "min"
    cfg = compose_cfg("monitor.metric=val/mota")
    with pytest.raises(ConfigError, match="monitor.metric=val/mota needs ground truth"):
        resolve_monitor(cfg, type("DM", (), {"has_ground_truth": False})())


def test_find_last_checkpoint_picks_the_newest(tmp_path):
    assert find_last_checkpoint(tmp_path, "quick") is None
    old = tmp_path / "quick" / "a" / "checkpoints" / "last.ckpt"
    new = tmp_path / "quick" / "b" / "checkpoints" / "best.ckpt"
    other = tmp_path / "other" / "c" / "checkpoints" / "last.ckpt"
    for i, p in enumerate((old, new, other)):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x")
        os.utime(p, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    assert find_last_checkpoint(tmp_path, "quick") == new


BAD = [
    (["model.glimpse_size=20"], "model.glimpse_size=20"),
    (["grid=16x16", "data.img_size=16"], "data.img_size=16"),
    (["task=generate", "observe_frames=9"], "observe_frames=9 leaves nothing to generate"),
    (["nll_samples=0"], "nll_samples=0 must be a whole number >= 1"),
    (["task=test"], "task=test needs a trained model"),
    (["task=track"], "task=track streams a video"),
    (["task=bogus"], "task=bogus is unknown"),
    (["ckpt_path=last"], "ckpt_path=last found no checkpoint"),
    (["ckpt_path=/no/such/file.ckpt"], "ckpt_path=/no/such/file.ckpt is not a file"),
    (["optimizer.lr=0"], "optimizer.lr=0"),
    (["monitor.metric=train/neg_elbo"], "monitor.metric=train/neg_elbo"),
    (["trainer.strategy=warp_drive"], "trainer.strategy=warp_drive is unknown"),
    (["strategy=ddp_cpu", "trainer.devices=1"], "strategy=ddp_cpu with trainer.devices=1"),
    (["data.batch_size=0"], "data.batch_size=0"),
    (["train_seq_len=0"], "train_seq_len=0 must be a number of frames"),
    (["model.box_source=corners"], "model.box_source=corners is unknown"),
    (["tracker=pick", "tracker.backfill=1"], "tracker.backfill=1 has the wrong type: PickTracker's backfill takes true"),
    (["tracker=pick", "tracker.views=3"], "tracker.views=3 must be one of 1, 2, 4, 8"),
    (["tracker=pick", "tracker@fit_val_tracker=pick", "fit_val_tracker.views=5"],
     "fit_val_tracker.views=5 must be one of 1, 2, 4, 8"),
    (["tracker=backfill", "tracker.copy_iou=0"], "tracker.copy_iou=0 must be in (0, 1]"),
    (["fit_val_tracker=pick"], "fit_val_tracker=pick names a tracker as a value; choose it as a config group: "
                               "tracker@fit_val_tracker=pick"),
    (["experiment=dsprites_easy", "tracker=online", "+tracker.views=8"],
     "tracker.views is not an option of OnlineTracker (it takes no options); drop it (~tracker.views)"),
    (["execution.fixed_slots=always"], "execution.fixed_slots='always' must be true, false or auto"),
    (["execution.skip_glimpse_below=2"], "execution.skip_glimpse_below=2 must be a presence in [0, 1]"),
    (["tracking_inference=greedy"], "tracking_inference=greedy is unknown"),
    (["curriculum.sigma_start=0.15"], "curriculum.sigma_start and curriculum.sigma_end go together"),
    (["curriculum.sigma_start=0.15", "curriculum.sigma_end=0"], "sigma_end=0 must be > 0"),
    (["+curriculum.sigma=0.1"], "curriculum.sigma is not a schedule parameter"),
    (["curriculum.reject_duplicates_until=-1"], "curriculum.reject_duplicates_until=-1 must be an optimiser step"),
    (["curriculum.reject_duplicates_until=0.5"], "curriculum.reject_duplicates_until=0.5 has the wrong type: Curriculum"),
    (["+callbacks.ema._target_=scalor.callbacks.EMA", "+callbacks.ema.decay=1.5"],
     "callbacks.ema.decay=1.5 must be in (0, 1)"),
]
if not torch.cuda.is_available():
    BAD += [(["strategy=ddp"], "strategy=ddp needs CUDA GPUs"), (["trainer=gpu"], "trainer=cpu")]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_config_errors_in_process(compose_cfg, data_dir, tmp_path, overrides, message):
    cfg = compose_cfg(f"paths.data_dir={tmp_path / 'fresh'}", *overrides)
    with pytest.raises(ConfigError) as err:
        run(cfg)
    text = str(err.value)
    assert message in text and "\n" not in text
    assert not (tmp_path / "fresh").exists()  # nothing generated or read


def test_checkpoint_that_does_not_match_the_config(compose_cfg, tmp_path):
    cfg = compose_cfg()
    model = OmegaConf.to_container(cfg.model, resolve=True)
    path = tmp_path / "other.ckpt"
    torch.save({"hyper_parameters": {"model": {**model, "num_cell_h": 8}}}, path)
    with pytest.raises(ConfigError, match="trained with grid.num_cell_h=8 but this config has 4"):
        check_config(compose_cfg(f"ckpt_path={path}"))
    # how an older checkpoint tracked, tested and generated (saved in its model config then) is not compared
    torch.save({"hyper_parameters": {"model": {**model, **OLD_TRACKING}}}, path)
    for task in ("fit", "test"):
        assert check_config(compose_cfg(f"task={task}", f"ckpt_path={path}", "tracker=backfill",
                                        "tracker.copy_iou=0.9", "nll_samples=2")) == str(path)
    assert check_config(compose_cfg(f"ckpt_path={path}", "tracker=pick", "tracker.views=8",
                                    "execution.skip_glimpse_below=0.1")) == str(path)
    # nor do the run options an older checkpoint saved in its model config (the execution group's now)
    torch.save({"hyper_parameters": {"model": {**model, **OLD_EXECUTION}}}, path)
    for task in ("fit", "test"):
        assert check_config(compose_cfg(f"task={task}", f"ckpt_path={path}", "execution.fixed_slots=auto",
                                        "execution.channels_last=true")) == str(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="is not a readable checkpoint"):
        check_config(compose_cfg(f"ckpt_path={path}"))


def test_execution_options_are_applied_and_not_saved_with_the_model(compose_cfg):
    """execution.* reach the built model and stay out of the module's saved hyperparameters."""
    from scalor.model.execution import ExecutionOptions
    from scalor.tasks import build_module

    module = build_module(compose_cfg("execution.channels_last=false", "execution.skip_glimpse_below=0.02",
                                      "execution.checkpoint_decoder=true"))
    assert not set(ExecutionOptions.keys()) & set(module.hparams["model"]) and "execution" not in module.hparams
    m = module.model
    assert (m.channels_last, m.skip_glimpse_below, m.checkpoint_decoder, m.checkpoint_encoder) == (False, 0.02, True,
                                                                                                   False)
    with pytest.raises(ConfigError, match="model.channels_last is now execution.channels_last"):
        check_config(compose_cfg("model.channels_last=false"))  # no longer a model key


def _old_checkpoint(cfg, path) -> None:
    """A checkpoint as `python run.py experiment=...` wrote it before the removed model options went and before
    the run options moved to the execution group and the tracking options to the tracker group, and before the
    model took a SCALORConfig: its saved model config has the removed ones at their defaults (off), run options and
    tracking options (dsprites_easy's), and the class as its _target_; the weights are the module's of ``cfg``."""
    from scalor.tasks import build_module

    module = build_module(cfg)
    hparams = {**module.hparams, "model": {**module.hparams["model"], "_target_": "scalor.model.SCALOR", **OLD_OFF,
                                           **OLD_EXECUTION, **OLD_TRACKING}}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams, "global_step": 7, "epoch": 0,
                "pytorch-lightning_version": L.__version__}, path)


def test_a_checkpoint_that_predates_an_option_matches_its_default(compose_cfg, tmp_path):
    """A checkpoint saved before an option existed ran with what is now its default: the checkpoint-vs-config check
    compares it so (and still names an option that differs)."""
    from scalor.tasks import build_module

    module = build_module(compose_cfg())
    saved = {k: v for k, v in module.hparams["model"].items() if k not in ("duplicate_min_iou", "z_what_dim")}
    path = tmp_path / "older.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {**module.hparams, "model": saved},
                "global_step": 1, "epoch": 0, "pytorch-lightning_version": L.__version__}, path)
    assert check_config(compose_cfg("task=test", f"ckpt_path={path}")) == str(path)
    with pytest.raises(ConfigError, match="was trained with model.duplicate_min_iou=0.0 but this config has 0.5"):
        check_config(compose_cfg("task=test", f"ckpt_path={path}", "model.duplicate_min_iou=0.5"))


def test_test_task_of_a_checkpoint_written_before_options_were_removed(compose_cfg, tmp_path):
    """python run.py task=test ckpt_path=<old checkpoint> experiment=dsprites_easy: the removed options, saved off,
    neither fail the checkpoint-vs-config check (test, fit resume, track) nor the test; the module rebuilds from
    its hparams too (load_from_checkpoint)."""
    from scalor.lit_module import SCALORLitModule

    path = tmp_path / "old.ckpt"
    _old_checkpoint(compose_cfg("experiment=dsprites_easy"), path)
    assert check_config(compose_cfg("experiment=dsprites_easy", f"ckpt_path={path}")) == str(path)  # fit resume
    assert check_config(compose_cfg("experiment=dsprites_easy", "task=track", f"ckpt_path={path}", "data=video",
                                    f"data.path={tmp_path / 'clip.mp4'}")) == str(path)
    module = SCALORLitModule.load_from_checkpoint(path, map_location="cpu")
    assert not (set(OLD_OFF) | set(OLD_EXECUTION) | set(OLD_TRACKING)) & set(module.hparams["model"])
    metrics = run(compose_cfg("experiment=dsprites_easy", "task=test", f"ckpt_path={path}", "tracker=pick"))
    assert metrics is not None and math.isfinite(metrics)


@pytest.mark.parametrize("task", ["test", "fit"])
def test_checkpoint_trained_with_a_removed_option_switched_on(compose_cfg, tmp_path, task):
    path = tmp_path / "old.ckpt"
    torch.save({"hyper_parameters": {"model": {**OmegaConf.to_container(compose_cfg().model, resolve=True),
                                               **OLD_OFF, "reverse_init": True}}}, path)
    with pytest.raises(ConfigError) as err:
        run(compose_cfg(f"task={task}", f"ckpt_path={path}", f"paths.data_dir={tmp_path / 'fresh'}"))
    assert str(err.value) == (f"ckpt_path={path} was trained with model.reverse_init=true, an option that no longer "
                              "exists; use an earlier version of scalor to evaluate it.")
    assert not (tmp_path / "fresh").exists()  # nothing generated or read


CLI_BAD = [["model.glimpse_size=20"], ["task=test"], ["data.batch_size=0"], ["trainer.max_steps=abc"],
           ["data.batch_size=abc"], ["experiment=null"], ["logger=null"], ["model.channels_last=false"],
           ["model.reverse_init=true"], ["model.pick_views=8"], ["tracker=pick", "tracker.views=3"],
           ["experiment=dsprites_easy", "tracker@fit_val_tracker=null"]]
if not torch.cuda.is_available():
    CLI_BAD.append(["strategy=ddp"])


@pytest.mark.parametrize("overrides", CLI_BAD, ids=[" ".join(o) for o in CLI_BAD])
def test_cli_config_error_is_one_line_and_exit_2(tmp_path, overrides):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "run.py", f"paths.output_root={tmp_path / 'out'}",
                           f"paths.data_dir={tmp_path / 'data'}", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "data").exists()


RETIRED = [("model.backfill=true", "write tracker=backfill (tracker=pick backfills its passes too)"),
           ("model.backfill_copy_iou=0.8", "write tracker.copy_iou=0.8 (with tracker=backfill or tracker=pick)"),
           ("model.pick_direction=true", "write tracker=pick"),
           ("model.pick_views=8", "write tracker=pick tracker.views=8"),
           ("+model.deterministic=true", "trackers always track on posterior means "
                                         "(tracking_inference=deterministic); drop it"),
           ("model.nll_samples=5", "write nll_samples=5"),
           ("model.observe_frames=3", "write observe_frames=3")]


@pytest.mark.parametrize(("override", "fix"), RETIRED, ids=[o for o, _ in RETIRED])
def test_a_tracking_option_on_the_model_names_its_new_key(override, fix, capsys, monkeypatch):
    """run.py: model.<key> of an option that moved out of the model is one error line naming the new key, exit 2
    (before Hydra composes anything); an experiment file that still sets one fails the config check alike."""
    monkeypatch.syspath_prepend(str(ROOT))
    from run import check_model_overrides

    with pytest.raises(SystemExit) as exit_:
        check_model_overrides(["experiment=dsprites_easy", override])
    key = override.lstrip("+").partition("=")[0]
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (f"error: {key} is no longer a model option (it only chose how a trained model "
                                       f"is run); {fix}.\n")


def test_retired_fit_val_pick_views_names_the_fit_val_tracker(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from run import check_retired_options

    with pytest.raises(SystemExit) as exit_:
        check_retired_options(["experiment=dsprites_easy", "fit_val_pick_views=2"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("error: fit_val_pick_views is now a tracker of its own; write "
                                       "tracker@fit_val_tracker=pick fit_val_tracker.views=2.\n")


def test_cli_retired_model_key_exits_2_with_its_new_key(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "run.py", f"paths.output_root={tmp_path / 'out'}", "experiment=dsprites_easy",
                           "model.pick_views=8"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["error: model.pick_views is no longer a model option (it only chose how a "
                                        "trained model is run); write tracker=pick tracker.views=8."]


def test_an_experiment_file_that_sets_a_tracking_option_on_the_model_fails_the_check(compose_cfg):
    with pytest.raises(ConfigError) as err:
        check_config(compose_cfg("+model.backfill=true"))
    assert str(err.value) == ("model.backfill is no longer a model option (it only chose how a trained model is run); "
                              "write tracker=backfill (tracker=pick backfills its passes too).")


def test_tracker_group_composes_and_instantiates(compose_cfg):
    """Each option of conf/tracker builds its tracker with the defaults of its class (one source of truth); the
    validations inside fit take `tracker` unless fit_val_tracker is set."""
    import dataclasses

    from scalor.tasks import build_module, build_tracker
    from scalor.tracking import BackfillTracker, OnlineTracker, PickTracker

    expected = {"online": OnlineTracker(), "backfill": BackfillTracker(), "pick": PickTracker(),
                "pick8": PickTracker(views=8)}
    assert sorted(p.stem for p in (CONF / "tracker").glob("*.yaml")) == sorted(expected)
    for name, tracker in expected.items():
        cfg = compose_cfg(f"tracker={name}")
        built = build_tracker(cfg)
        assert built == tracker and type(built) is type(tracker), name
        defaults = {f.name: f.default for f in dataclasses.fields(type(tracker))}
        node = {k: v for k, v in cfg.tracker.items() if k != "_target_"}
        assert node == (defaults if name != "pick8" else {**defaults, "views": 8}), name
    assert compose_cfg().tracker._target_ == "scalor.tracking.OnlineTracker" and compose_cfg().fit_val_tracker is None
    module = build_module(compose_cfg("tracker=pick", "tracker.views=2", "tracker@fit_val_tracker=backfill"))
    assert module.tracker == PickTracker(views=2) and module.fit_val_tracker == BackfillTracker()
    module = build_module(compose_cfg("fit_val_tracker={_target_:scalor.tracking.PickTracker,views:4}", "nll_samples=3"))
    assert module.tracker == OnlineTracker() and module.fit_val_tracker == PickTracker(views=4)
    assert module.nll_samples == 3 and "tracker" not in module.hparams and "fit_val_tracker" not in module.hparams
