"""torchrun on CPU (gloo): two processes on one machine against one process with the same global batch."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from resnetlab.checkpoint import load_checkpoint
from resnetlab.config import AugmentConfig
from resnetlab.data.augment import BatchAugment
from resnetlab.data.loader import CachedLoader
from tests.conftest import REPO

# Both runs in fp32 and with train.sync_bn=true, which on CPU is resnetlab's BatchNorm with float64
# statistics for any process count (PyTorch's CPU BatchNorm backward in fp32 was measured up to 5%
# off float64 in a ResNet-9 layer, so a plain one-process run is itself not a float-exact
# reference). What remains is summation order: the two ranks' conv weight gradients are summed in
# fp32 halves and then all-reduced; measured per-step gradient agreement ~1e-5 relative. Over the
# 4 steps here weights and running statistics agree to ~3e-7 (cosine) / ~2e-5 (constant lr);
# 1e-4 absolute on weights of size ~0.1-1 leaves room for machine-to-machine variation while one
# image assigned to the wrong step or rank moves them by ~1e-2.
ATOL = 1e-4


def overrides(data, out, *extra):
    # constant: epochs=2 on resume keeps the lr
    return [f"data.dataset={data}", f"train.out_dir={out}", "train.name=run", "model.name=resnet9",
            "model.filters=[8,16,16,32]", "train.epochs=1", "train.batch_size=500", "train.eval_batch_size=100",
            "train.precision=fp32", "train.channels_last=false", "train.sync_bn=true", "train.progress=false",
            "optim.lr=0.001", "schedule.name=constant", "train.dist_timeout=120", "train.device=cpu", *extra]


def torchrun(nproc, args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "resnetlab", "train", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)


def single(args):
    return subprocess.run([sys.executable, "-m", "resnetlab", "train", *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)


def max_diff(a, b):
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    shared = REPO.parent / "shared" / "data" / "cifar10-jpeg"
    if not shared.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    root = tmp_path_factory.mktemp("dist")
    two = torchrun(2, overrides(shared, root / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    one = single(overrides(shared, root / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    return shared, root, two


def test_two_processes_match_one(runs):
    _, root, two = runs
    a, b = load_checkpoint(root / "two" / "run" / "last.pt"), load_checkpoint(root / "one" / "run" / "last.pt")
    assert a["model"].keys() == b["model"].keys()  # SyncBatchNorm saves plain BatchNorm state
    assert max_diff(a["model"], b["model"]) < ATOL
    ma = json.loads((root / "two" / "run" / "metrics.jsonl").read_text())
    mb = json.loads((root / "one" / "run" / "metrics.jsonl").read_text())
    assert ma["train_loss"] == pytest.approx(mb["train_loss"], rel=1e-4)  # reduced over ranks, not rank 0's half
    ta = json.loads((root / "two" / "run" / "eval_test.json").read_text())
    tb = json.loads((root / "one" / "run" / "eval_test.json").read_text())
    assert ta["n"] == tb["n"] == 1000  # every test image counted once across the ranks
    assert sum(map(sum, ta["confusion"])) == 1000


def test_run_folder_written_once_by_rank_zero(runs):
    _, root, two = runs
    assert [p.name for p in (root / "two").iterdir()] == ["run"]
    assert json.loads((root / "two" / "run" / "env.json").read_text())["world_size"] == 2
    assert two.stdout.count("test top-1") == 1 and "x 2 processes" in two.stdout


def test_resume_with_another_process_count(runs, tmp_path):
    shared, root, _ = runs
    # two processes trained epoch 1 (above); one process trains epoch 2 from that checkpoint
    import shutil

    shutil.copytree(root / "two" / "run", tmp_path / "run")
    resumed = single(["--resume", str(tmp_path / "run"), "train.epochs=2"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = single(overrides(shared, tmp_path / "straight", "train.epochs=2"))
    assert straight.returncode == 0, straight.stderr[-2000:]
    a = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "straight" / "run" / "last.pt")["model"]
    assert max_diff(a, b) < 2 * ATOL


@pytest.mark.parametrize("world", [2, 3])
def test_every_sample_once_across_ranks_uneven(world):
    n = 23  # not a multiple of the batch (4) nor of the rank count
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 3, 3).contiguous()
    labels = torch.arange(n)
    seen = []
    for rank in range(world):
        loader = CachedLoader(images, labels, batch_size=4, device=torch.device("cpu"), seed=3, shuffle=True,
                              augment=BatchAugment(AugmentConfig(crop_padding=1), num_classes=10), tail="merge",
                              rank=rank, world=world)
        seen += [i for _, y in loader.epoch(2) for i in y.tolist()]
    assert sorted(seen) == list(range(n))


def test_more_processes_than_batch(class_folders, tmp_path):
    env = {**os.environ, "WORLD_SIZE": "4", "RANK": "0", "LOCAL_RANK": "0"}
    proc = subprocess.run([sys.executable, "-m", "resnetlab", "train", f"data.dataset={class_folders}",
                           "train.batch_size=2", f"train.out_dir={tmp_path}"], cwd=REPO, capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "4 processes cannot share a global batch of 2" in proc.stderr


def test_sigterm_under_torchrun_checkpoints_and_resumes(runs, tmp_path):
    import signal

    shared, _, _ = runs
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "resnetlab",
           "train", *overrides(shared, tmp_path, "train.epochs=200", "train.batch_size=100")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while "epoch   1/200" not in proc.stdout.readline():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "no epoch finished in 300 s"
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    _, err = proc.communicate(timeout=120)
    assert "stopped by SIGTERM" in err, err[-2000:]
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] >= 1
    resumed = single(["--resume", str(tmp_path / "run"), f"train.epochs={state['epoch'] + 1}"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == state["epoch"] + 1


RANK_DIES_ONCE = """
import os, signal, sys
from resnetlab.config import load_config
from resnetlab.run.fit import fit
from resnetlab.run.prepare import prepare

def die(session, info):  # rank 1 dies mid-epoch 2, in torchrun's first attempt only
    if os.environ["RANK"] == "1" and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0" and info["step"] == 6:
        os.kill(os.getpid(), signal.SIGKILL)

fit(prepare(load_config(None, sys.argv[1:]), run_name="elastic"), callbacks={"on_batch_end": [die]})
"""


def test_torchrun_max_restarts_resumes_the_run_without_a_person(runs, tmp_path):
    shared, _, _ = runs
    script = tmp_path / "dies_once.py"
    script.write_text(RANK_DIES_ONCE)
    # no train.name: the run is named from torchrun's run id, the same in the restarted processes
    args = [a for a in overrides(shared, tmp_path / "out", "train.epochs=2", "train.checkpoint_every=2")
            if a != "train.name=run"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--max-restarts=1",
           str(script), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "out").iterdir()  # one run folder: the restart resumed it rather than starting anew
    assert run.name.startswith("elastic-") and "torchrun restart 1: resuming" in proc.stderr
    env = json.loads((run / "env.json").read_text())
    assert env["resumes"][0]["torchrun_restart"] == 1
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_torchrun_streams_disjoint_shards_and_builds_one_disk_cache(tmp_path):
    """Two processes: from shards, streamed (each rank reads its own shards), and from a disk cache
    (built once, by local rank 0, while rank 1 waits for it)."""
    from resnetlab.data.shards import write_shards
    from tests.conftest import write_class_folders

    root = write_class_folders(tmp_path / "data", per_class=10)
    write_shards(str(root), tmp_path / "shards", shard_size="5", progress=False)
    common = [f"data.dataset={tmp_path / 'shards'}", "model.name=resnet9", "model.filters=[8,8,16,16]",
              "train.epochs=2", "train.batch_size=8", "data.image_size=16", "train.progress=false",
              "train.report=false", "train.device=cpu", "train.dist_timeout=120", "train.name=run"]
    streamed = torchrun(2, [*common, "data.cache=stream", "data.num_workers=0", f"train.out_dir={tmp_path / 's'}"])
    assert streamed.returncode == 0, streamed.stderr[-3000:]
    history = [json.loads(line) for line in (tmp_path / "s" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and all(h["train_images"] == 30 for h in history)
    cached = torchrun(2, [*common, "data.cache=disk", f"data.cache_dir={tmp_path / 'cache'}",
                          f"train.out_dir={tmp_path / 'd'}"])
    assert cached.returncode == 0, cached.stderr[-3000:]
    (folder,) = (tmp_path / "cache").iterdir()  # one decoded cache, built once
    index = json.loads((folder / "index.json").read_text())
    assert sorted(p.name for p in folder.iterdir()) == ["images.u8", "index.json", "lock"]
    assert index["records"] == len(index["files"]) == 39  # 30 train + 9 test images, each decoded once
