"""Sweeps, DDP and cluster launch as a user runs them: `python run.py -m ...` subprocesses on tiny data.

Multirun isolation (folders, wandb runs and groups, a failing job), DDP on 2 CPU processes (alone and inside a
multirun), the Optuna search, the submitit local and SLURM launchers, and every recipe of conf/sweep and
sweeps/ (they must expand into valid jobs).
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import scalor  # noqa: F401  (registers the ${scalor.*} resolvers)
from conftest import CONF, ROOT, tiny_cli

ENV = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# One training batch and one validation batch per epoch: the cheapest run that still validates.
ONE_BATCH = ["trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "trainer.max_steps=1"]


def run_py(tmp_path: Path, data_dir: Path, *overrides: str, multirun: bool = True, timeout: int = 600,
           env: dict | None = None) -> subprocess.CompletedProcess:
    flags = ["-m"] if multirun else []
    return subprocess.run([sys.executable, "run.py", *flags, *tiny_cli(tmp_path, data_dir), *overrides], cwd=ROOT,
                          env=env or ENV, capture_output=True, text=True, timeout=timeout)


def sweep_dir(tmp_path: Path, experiment: str = "quick") -> Path:
    sweeps = list((tmp_path / "outputs" / experiment).glob("multirun_*"))
    assert len(sweeps) == 1, sweeps  # one sweep folder: no worker or job started a sweep of its own
    return sweeps[0]


def job_overrides(job: Path) -> list[str]:
    return yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())


def csv_metrics(job: Path) -> list[dict]:
    with open(next(job.glob("csv/version_*/metrics.csv"))) as f:
        return list(csv.DictReader(f))


def compose_hydra(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


# ======================================================================================= multirun isolation
def test_multirun_two_jobs_fast_dev_run_have_own_folders_and_results(tmp_path, data_dir):
    proc = run_py(tmp_path, data_dir, "seed=1,2", "trainer.fast_dev_run=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = sweep_dir(tmp_path)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job, seed in (("0", 1), ("1", 2)):
        assert f"seed={seed}" in job_overrides(sweep / job)
    # one result per job, each naming its own folder
    assert proc.stdout.count("task=fit finished") == 2
    folders = re.findall(r"run folder\s+(\S+)", proc.stdout)
    assert [Path(f).name for f in folders] == ["0", "1"] and len(set(folders)) == 2


def test_sweep_folders_differ_within_one_second():
    first = compose_hydra().hydra.sweep.dir
    second = compose_hydra().hydra.sweep.dir
    assert first != second and re.search(r"multirun_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{6}$", first)


def test_multirun_failing_job_is_reported_and_the_other_finishes(tmp_path, data_dir):
    proc = run_py(tmp_path, data_dir, "model.sigma=-1,0.1", "trainer.fast_dev_run=true")
    assert proc.returncode == 1, proc.stderr[-3000:]  # the sweep ran to its end, then reports the failure
    assert "error: job 0: model.sigma=-1.0 must be > 0" in proc.stderr  # typed: the number is a float
    assert "error: 1 of 2 jobs failed (job 0" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout.count("task=fit finished") == 1 and "model.sigma=0.1" in job_overrides(sweep_dir(tmp_path) / "1")


def test_multirun_jobs_have_own_wandb_run_grouped_by_sweep(tmp_path, data_dir):
    proc = run_py(tmp_path, data_dir, "seed=1,2", "logger=wandb", *ONE_BATCH)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = sweep_dir(tmp_path)
    group = f"quick/{sweep.name}"
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
        runs = list((sweep / job / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1
        record = runs[0].read_bytes()  # protobuf records: the strings are stored as they are
        assert group.encode() in record and f"{group}/{job}".encode() in record  # group and run name
        assert b"best/val/mota" in record  # what run() returns, for wandb sweeps


# ======================================================================================= DDP
def test_ddp_cpu_two_processes_reduce_validation_over_the_whole_set(tmp_path, data_dir):
    """2 processes over gloo: 8 sequences in per-process batches of 2 are 2 steps per epoch; the validation
    metrics count all 4 validation sequences (each process sees 2), and rank 0 alone prints the summary."""
    proc = run_py(tmp_path, data_dir, "strategy=ddp_cpu", "trainer.max_steps=2", "data.num_val=4", "logger=csv",
                  "test_after_fit=true", multirun=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("task=fit finished") == 1 and "test/mota" in proc.stdout
    run = next(p for p in (tmp_path / "outputs" / "quick").iterdir() if p.is_dir())
    logs = "".join(p.read_text() for p in run.glob("*.log"))  # Lightning's INFO lines go to the run's logs
    assert "distributed_backend=gloo" in logs and "MEMBER: 2/2" in logs
    val = [r for r in csv_metrics(run) if r.get("val/num_sequences")]
    assert [(r["epoch"], r["step"]) for r in val] == [("0", "1")]  # validated after 2 steps: the whole epoch
    assert float(val[0]["val/num_sequences"]) == 4.0 and float(val[0]["val/num_frames"]) == 12.0  # 4 x 3 frames


@pytest.mark.slow
def test_ddp_cpu_inside_a_multirun_runs_each_job_once(tmp_path, data_dir):
    """Each job starts its own worker with the job's own overrides (not the whole sweep again), and leaves its
    process group so that the next job gets a fresh one."""
    proc = run_py(tmp_path, data_dir, "strategy=ddp_cpu", "seed=1,2", "trainer.max_steps=2", "data.num_val=4",
                  "logger=csv", timeout=300)  # without that, the second job waits for a worker forever
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = sweep_dir(tmp_path)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert proc.stdout.count("task=fit finished") == 2
    for job, seed in (("0", "1"), ("1", "2")):
        worker_log = (sweep / job / "train_ddp_process_1.log").read_text()  # the worker ran in the job's folder
        assert re.findall(r"\[rank: 1\] Seed set to (\d+)", worker_log) == [seed]  # ... with its job's seed
        assert [float(r["val/num_sequences"]) for r in csv_metrics(sweep / job) if r.get("val/num_sequences")] == [4.0]


def test_ddp_worker_command_reruns_only_this_job(tmp_path):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from scalor.launch import RUN_PY, ddp_worker_command

    cfg = compose_hydra("seed=2", "strategy=ddp_cpu", "hydra.job.chdir=false", "hydra/launcher=local",
                        "hydra.sweep.dir=/somewhere")
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "multirun_x" / "3")
        cfg.hydra.runtime.cwd = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    command, cwd = ddp_worker_command(1)
    assert command[:2] == [sys.executable, str(RUN_PY)] and cwd == str(tmp_path)
    assert command[2:] == ["hydra.job.chdir=false", "seed=2", "strategy=ddp_cpu",
                           f'hydra.run.dir="{tmp_path / "multirun_x" / "3"}"', "hydra.job.name=train_ddp_process_1",
                           "hydra.output_subdir=null", "hydra.mode=RUN"]  # no -m, launcher or sweep settings


# ======================================================================================= Optuna
@pytest.mark.filterwarnings("ignore:.*not compatible with SQLAlchemy 2.0")
def test_optuna_search_records_a_failed_trial_and_finishes(tmp_path, data_dir):
    """2 trials, the first with an impossible sigma (chosen by the seeded sampler): it is reported and recorded
    as failed, the second trains and gives the best value; the study is kept in SQLite (the pinned SQLAlchemy)."""
    import optuna

    db = tmp_path / "optuna.db"
    proc = run_py(tmp_path, data_dir, "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                  "hydra.sweeper.sampler.n_startup_trials=1", "hydra.sweeper.sampler.seed=1",
                  'hydra.sweeper.params={model.sigma:"choice(-1.0,0.1)"}', f"hydra.sweeper.storage=sqlite:///{db}",
                  *ONE_BATCH)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "error: job 0: model.sigma=-1.0 must be > 0" in proc.stderr
    result = yaml.safe_load((sweep_dir(tmp_path) / "optimization_results.yaml").read_text())
    assert result["best_params"]["model.sigma"] == 0.1 and set(result["best_params"]) >= {"optimizer.lr"}
    study = optuna.load_study(study_name="quick", storage=f"sqlite:///{db}")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # val/mota on dSprites
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert study.best_value == pytest.approx(result["best_value"])


def test_optuna_direction_follows_the_metric_run_returns():
    assert compose_hydra("hparams_search=optuna").hydra.sweeper.direction == "maximize"  # val/mota
    assert compose_hydra("hparams_search=optuna", "data=video").hydra.sweeper.direction == "minimize"  # ELBO
    assert compose_hydra("hparams_search=optuna", "data=grand_central").hydra.sweeper.direction == "minimize"
    assert compose_hydra("hparams_search=optuna", "monitor.metric=val/neg_elbo").hydra.sweeper.direction == "minimize"
    assert compose_hydra("hparams_search=optuna", "monitor.metric=val/idf1").hydra.sweeper.direction == "maximize"


# ======================================================================================= launchers
@pytest.mark.slow
def test_submitit_local_launcher_runs_one_job(tmp_path, data_dir):
    proc = run_py(tmp_path, data_dir, "hydra/launcher=local", "seed=5", "trainer.fast_dev_run=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = sweep_dir(tmp_path)
    assert "seed=5" in job_overrides(sweep / "0") and (sweep / "0" / "run.log").is_file()
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.out"))
    assert "task=fit finished" in logs and "Job completed successfully" in logs


def test_slurm_launcher_resources_follow_trainer_devices(tmp_path, monkeypatch):
    """The sbatch file submitit writes for `hydra/launcher=slurm strategy=ddp trainer.devices=4` (a fake `srun`
    on PATH stands in for the cluster)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    def resolved(*overrides: str) -> dict:
        return OmegaConf.to_container(compose_hydra("hydra/launcher=slurm", *overrides).hydra.launcher, resolve=True)

    params = resolved("strategy=ddp", "trainer.devices=4", "hydra.launcher.partition=gpu",
                      "hydra.launcher.timeout_min=120")
    assert (params["tasks_per_node"], params["gpus_per_node"], params["nodes"]) == (4, 4, 1)
    assert resolved("trainer=cpu", "strategy=ddp_cpu")["gpus_per_node"] == 0
    assert resolved("strategy=ddp", "trainer.devices=2", "trainer.num_nodes=2")["nodes"] == 2
    with pytest.raises(Exception, match="needs trainer.devices as a number"):
        resolved("strategy=ddp")  # devices=auto cannot size a SLURM job

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    # the launcher's own mapping of its keys onto submitit's (hydra_submitit_launcher.launch)
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(folder=str(tmp_path / "submitit"), cluster="slurm")
    executor.update_parameters(**{k if k in generic else f"slurm_{k}": v for k, v in params.items()
                                  if k not in ("submitit_folder", "max_num_timeout", "_target_")})
    sbatch = executor._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in ("--ntasks-per-node=4", "--gpus-per-node=4", "--nodes=1", "--partition=gpu", "--time=120"):
        assert f"#SBATCH {line}\n" in sbatch, line
    assert "srun " in sbatch  # one srun task per GPU: Lightning reads SLURM_* and spawns nothing


def test_local_launcher_exposes_the_gpus_a_job_uses():
    def gpus(*overrides: str) -> int:
        return compose_hydra("hydra/launcher=local", *overrides).hydra.launcher.gpus_per_node

    assert gpus("trainer=cpu") == 0 and gpus("trainer=cpu", "strategy=ddp_cpu") == 0
    assert gpus("trainer=gpu", "strategy=ddp", "trainer.devices=2") == 2


# ======================================================================================= recipes
@pytest.mark.parametrize(("recipe", "jobs"), [("grid_maxobj", 8), ("seeds", 5)])
def test_recipe_expands_into_valid_jobs(tmp_path, data_dir, recipe, jobs):
    """Every job of the recipe composes and passes the full config check (task=test then stops each one for
    want of a checkpoint, before any data is made)."""
    proc = run_py(tmp_path, data_dir, f"+sweep={recipe}", "task=test", multirun=False)
    assert f"error: {jobs} of {jobs} jobs failed" in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("needs a trained model") == jobs
    experiment = "dsprites_crowded" if recipe == "grid_maxobj" else "quick"
    folders = [p for p in sweep_dir(tmp_path, experiment).iterdir() if p.is_dir()]
    combos = {tuple(job_overrides(p)) for p in folders}
    assert len(folders) == jobs and len(combos) == jobs  # every job a different point of the sweep


def test_wandb_sweep_file_drives_run_py(tmp_path, monkeypatch):
    """wandb's agent builds the command of a run from sweeps/wandb_search.yaml; that command composes."""
    from wandb import wandb_agent

    spec = yaml.safe_load((ROOT / "sweeps" / "wandb_search.yaml").read_text())
    assert spec["program"] == "run.py"
    assert spec["command"] == ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]
    # one point of the search space, as the sweep controller would send it
    args = {}
    for name, param in spec["parameters"].items():
        value = param.get("value", param.get("min", (param.get("values") or [None])[0]))
        args[name] = {"value": value}

    started = []

    class Started:  # stands in for the agent's child process: records the command instead of running it
        def __init__(self, command=None, **kwargs):
            started.append(command)

    monkeypatch.setattr(wandb_agent, "AgentProcess", Started)
    for var in ("WANDB_DIR", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH"):
        monkeypatch.setenv(var, str(tmp_path) if var == "WANDB_DIR" else "x")
    agent = wandb_agent.Agent(api=None, queue=None)
    agent._sweep_command = spec["command"]
    agent._command_run({"args": args, "program": spec["program"], "run_id": "run1"})
    command = started[0]
    assert command[:3] == ["/usr/bin/env", "python", "run.py"] and "optimizer.lr=1e-05" in command

    env = {**ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{ENV['PATH']}", "WANDB_SWEEP_ID": "abc"}
    env.pop("WANDB_MODE")
    proc = subprocess.run([*command, "--cfg", "job", "--resolve"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = yaml.safe_load(proc.stdout)
    assert job["optimizer"]["lr"] == pytest.approx(1e-5) and job["model"]["sigma"] == pytest.approx(0.05)
    assert job["data"]["max_objects"] == 5  # experiment=dsprites_easy
    assert job["logger"]["wandb"]["mode"] == "online"  # a run started by the agent reports to the sweep
