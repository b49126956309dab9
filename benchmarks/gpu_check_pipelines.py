"""The pipeline rows of ``benchmarks/gpu_check.py``: pretrain, evaluate, diagnostics, finetune, few-shot, graph fold
and the 2-GPU run, each with the checks its numbers allow (see the docstring of ``gpu_check.py``)."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from gpu_check_common import ModuleWatch, SkipError, failure, native_bf16

#: pretrain's kNN top-1 (the monitor's, after one epoch) must beat chance by this many points
KNN_MARGIN = 20.0
#: few-shot's mean accuracy of each K must beat chance by this many standard errors of a chance-level mean
FEWSHOT_SE = 2.0
#: the learning rate of the pre-trained model in the few-shot episodes (the head keeps its own, 1e-2)
FEWSHOT_LR = 1e-4
GPU_CHECK = Path(__file__).resolve().parent / "gpu_check.py"


def run_config(sizes, accelerator: str, devices: int = 1):
    from hscl.engine.runtime.config import load_config

    overrides = [
        "data.dataset=cifar10",  # the name only: the data is passed to train()
        f"model.encoder={sizes.encoder}",
        f"model.hidden_dim={sizes.hidden_dim}",
        f"model.projection_dim={sizes.projection_dim}",
        "loss.method=h-scl",
        "loss.beta=1.0",
        "train.epochs=1",
        f"train.batch_size={sizes.batch_size}",
        f"train.knn_train={sizes.knn_train}",
        f"train.knn_test={sizes.knn_test}",
        f"train.knn_k={min(200, sizes.knn_train // 2)}",
        "train.precision=auto",
        "train.progress=false",
        f"train.accelerator={accelerator}",
        f"train.devices={devices}",
        f"eval.linear_epochs={sizes.linear_epochs}",
        f"eval.knn_k={min(200, sizes.knn_train // 2)}",
        f"diagnostics.probe_size={sizes.probe_size}",
    ]
    if sizes.widths is not None:
        overrides.append(f"model.widths={sizes.widths}")
    if devices > 1:
        overrides.append("train.strategy=ddp")
    return load_config(None, overrides)


def quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def read_run(run_dir: Path) -> tuple[dict, dict]:
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise RuntimeError(f"{run_dir}/metrics.csv has no epoch row")
    summary = json.loads((run_dir / "train_summary.json").read_text())
    return rows[-1], summary


def finite(value: str, what: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise RuntimeError(f"{what} is {value}")
    return number


def expected_precision(device: torch.device) -> tuple[str | None, str | None]:
    """(Lightning precision, module output dtype) that ``train.precision=auto`` must use on ``device``: bf16-mixed
    on a GPU with native bf16, fp16-mixed on an older GPU; (None, None) on the CPU (its timing probe decides)."""
    bf16 = native_bf16(device)
    if bf16 is None:
        return None, None
    return ("bf16-mixed", "bfloat16") if bf16 else ("16-mixed", "float16")


def group_alive(pgid: int) -> bool:
    """Whether a process of process group ``pgid`` is still running (zombies, left to be reaped, do not count)."""
    import psutil

    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return False


def end_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """End every process of ``proc``'s process group (``proc`` was started with ``start_new_session``, so the group
    id is its pid): SIGTERM, then SIGKILL to what is left after ``grace_s``; reaps ``proc``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc.poll()
        if not group_alive(proc.pid):
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and (proc.poll() is None or group_alive(proc.pid)):
            time.sleep(0.1)
    proc.wait()


def run_group(cmd: list[str], timeout_s: float, log: Path) -> int:
    """Run ``cmd`` in a new process group with its output in ``log``, and return its exit code once every process
    of the group (the child and the ranks it started) has ended. At ``timeout_s`` whatever is left of the group is
    ended and a failure raised."""
    deadline = time.monotonic() + timeout_s
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
            while group_alive(proc.pid) and time.monotonic() < deadline:  # the other ranks finish on their own
                time.sleep(0.1)
            if group_alive(proc.pid):
                raise subprocess.TimeoutExpired(cmd, timeout_s)
            return code
        except subprocess.TimeoutExpired:
            end_group(proc)
            raise failure(f"timed out after {timeout_s:.0f} s; its process group (every rank) was ended") from None
        finally:
            end_group(proc)


class Pipelines:
    def __init__(self, device: torch.device, sizes, data, work: Path) -> None:
        self.device = device
        self.sizes = sizes
        self.data = data
        self.work = work
        self.final: Path | None = None
        self.task = None
        self.config = None

    @property
    def name(self) -> str:
        return str(self.device)

    def _where(self, module: torch.nn.Module) -> str:
        where = next(module.parameters()).device
        if where.type != self.device.type:
            raise RuntimeError(f"the model is on {where}, not on {self.device}")
        return str(where)

    def pretrain(self) -> tuple[str, str, dict]:
        from hscl.engine.pretrain.run import train

        accelerator = "gpu" if self.device.type == "cuda" else "cpu"
        run_dir = self.work / "pretrain"
        with ModuleWatch() as watch:
            self.final = train(run_config(self.sizes, accelerator), run_dir, data=self.data)
        row, summary = read_run(run_dir)
        loss = finite(row["loss"], "the epoch's loss")
        rate, knn = float(row["images_per_s"]), float(row["knn_top1"])
        chance = 100.0 / self.data.num_classes
        metrics = {
            "images_per_s": rate,
            "epoch_seconds": float(row["epoch_seconds"]),
            "loss": loss,
            "knn_top1": knn,
            "knn_chance": chance,
            "precision": summary["precision"],
            "module_outputs": watch.describe(),
            "channels_last": summary["channels_last"],
            "deterministic": summary["deterministic"],
            "numerics": summary.get("numerics"),  # TF32, torch version, the GPU's name and compute capability
            "encoder": self.sizes.encoder,
            "images": len(self.data.train_labels),
        }
        used = ", ".join(sorted(watch.dtypes)) or "-"
        key = f"{rate:.0f} img/s, {summary['precision']} (modules: {used}), kNN top-1 {knn:.1f}%, loss {loss:.3f}"
        problems = []
        want, dtype = expected_precision(self.device)
        seen = {t for d, t in watch.seen if d.startswith("cuda")}
        if want is not None and (summary["precision"] != want or dtype not in seen):
            problems.append(f"expected {want} with {dtype} modules, got {summary['precision']} with {sorted(seen)}")
        if not knn >= chance + KNN_MARGIN:  # also NaN
            problems.append(f"kNN top-1 {knn:.1f}% is not chance {chance:.0f}% + {KNN_MARGIN:g} points")
        if problems:
            raise failure("; ".join(problems), key, metrics)
        return self.name, key, metrics

    def _task(self):
        if self.final is None:
            raise SkipError("needs the pretrain checkpoint (pretrain failed)")
        if self.task is None:
            from hscl.engine.pretrain.run import load_task

            self.task, self.config = load_task(self.final, device=self.device)
        return self.task, self.config

    def evaluate(self) -> tuple[str, str, dict]:
        from hscl.engine.evaluation.probes import evaluate_task

        task, config = self._task()
        where = self._where(task)
        result = evaluate_task(task, self.data, config)
        key = f"linear top-1 {result['linear_top1']:.1f}%, kNN top-1 {result['knn_top1']:.1f}%"
        return where, key, result

    def diagnostics(self) -> tuple[str, str, dict]:
        from hscl.engine.pretrain.monitor import diagnostics_hardening, measure_geometry, probe_set

        task, config = self._task()
        where = self._where(task)
        x, labels = probe_set(task, self.data, config)
        metrics, values = measure_geometry(task, x, labels, diagnostics_hardening(config, task.loss_fn))
        if values.device.type != "cpu" or values.dtype != torch.float64:
            raise RuntimeError(f"the spectrum is {values.dtype} on {values.device}, not float64 on the CPU")
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        bad = sorted(k for k, v in numbers.items() if not math.isfinite(v))
        key = f"assumption1 {metrics['assumption1']:.3f}, feature eff. rank {metrics['feature_effective_rank']:.1f}"
        if bad:
            key += f" (non-finite: {', '.join(bad)})"
        return where, key, {**numbers, "probe_images": int(x.shape[0]), "diag_hardening": metrics["diag_hardening"]}

    def finetune(self) -> tuple[str, str, dict]:
        from hscl.engine.finetune.config import FinetuneConfig
        from hscl.engine.finetune.loop import finetune

        task, _ = self._task()
        data = self.data
        if self.sizes.finetune_train is not None:
            data = data.subset(min(self.sizes.finetune_train, len(data.train_labels)), None, seed=1)
        config = FinetuneConfig(objective="schane", epochs=1, batch_size=self.sizes.finetune_batch)
        with ModuleWatch() as watch:
            result = finetune(task.model, data, config, progress=False, device=self.device)
        where = self._where(result.model)
        images = (len(data.train_labels) // min(config.batch_size, len(data.train_labels))) * config.batch_size
        rate = images * config.views / result.train_seconds
        used = ", ".join(sorted(watch.dtypes)) or "-"
        key = f"test top-1 {result.test_top1:.1f}%, {rate:.0f} img/s (modules: {used})"
        metrics = {"test_top1": result.test_top1, "images_per_s": rate, "train_seconds": result.train_seconds}
        return where, key, {**metrics, "module_outputs": watch.describe()}

    def few_shot(self) -> tuple[str, str, dict]:
        from hscl.engine.finetune.config import FinetuneConfig
        from hscl.engine.finetune.fewshot import FewShotConfig, few_shot

        task, _ = self._task()
        s = self.sizes
        fewshot = FewShotConfig(ways=s.ways, shots=list(s.shots), queries=s.queries, episodes=s.episodes, steps=s.steps)
        # lr 1e-4 as the schane presets' episodes: at the default 1e-3, 30 Adam steps wreck a ResNet-18 (5-way on
        # the synthetic set after a 2048-image epoch: 24 / 28% at 1 / 5 shots, against 51 / 62% at 1e-4)
        configs = {"supcon+ce": FinetuneConfig(objective="supcon+ce", bn="frozen", lr=FEWSHOT_LR)}
        classes = list(range(self.data.num_classes))  # the pre-training saw them too: a pipeline check only
        with ModuleWatch() as watch:
            rows = few_shot(task.model, self.data, classes, configs, fewshot, progress=False, device=self.device)
        means = {k: statistics.fmean(r["accuracy"]["supcon+ce"] for r in episodes) for k, episodes in rows.items()}
        chance = 100.0 / s.ways
        need = chance + FEWSHOT_SE * 100.0 * math.sqrt(
            (1 / s.ways) * (1 - 1 / s.ways) / (s.ways * s.queries * s.episodes)
        )
        parts = ", ".join(f"{k}-shot {v:.1f}%" for k, v in means.items())
        key = f"{s.ways}-way {parts} (chance {chance:.0f}%; {s.episodes} episodes x {s.steps} steps)"
        metrics = {f"{k}shot_accuracy": v for k, v in means.items()}
        metrics.update(chance=chance, required=need, module_outputs=watch.describe())
        problems = []
        devices = sorted(watch.devices)
        if not devices or any(torch.device(d).type != self.device.type for d in devices):
            problems.append(f"asked for {self.device}, its modules ran on {devices or 'nothing'}")
        low = [f"{k}-shot {v:.1f}%" for k, v in means.items() if not v >= need]
        if low:
            problems.append(f"{', '.join(low)} not above chance + {FEWSHOT_SE:g} standard errors ({need:.1f}%)")
        if problems:
            raise failure("; ".join(problems), key, metrics)
        return devices[0], key, metrics

    def graph_fold(self) -> tuple[str, str, dict]:
        try:
            import torch_geometric  # noqa: F401
        except ImportError as err:
            raise SkipError(f"torch_geometric is not installed ({err}); pip install -e '.[graph]'") from err
        import numpy as np
        from sklearn.model_selection import StratifiedKFold

        from hscl.data.images import DatasetNotFoundError
        from hscl.engine.pretrain.graph_train import GraphObjective, embed_graphs, pretrain_graph_encoder
        from hscl.experiments.table2 import svm_accuracy

        try:
            from hscl.data.graphs import read_molecules

            data = read_molecules()
            source = "molecules"
        except DatasetNotFoundError:
            data = tiny_graphs()
            source = "synthetic graphs"
        y = data.y.numpy()
        train_idx, test_idx = next(iter(StratifiedKFold(10, shuffle=True, random_state=0).split(np.zeros(len(y)), y)))
        result = pretrain_graph_encoder(
            data,
            GraphObjective("h-scl", 1.0),
            index=torch.as_tensor(train_idx),
            epochs=self.sizes.graph_epochs,
            batch_size=128,
            seed=0,
            device=self.device,
        )
        where = self._where(result.model)
        if not all(math.isfinite(v) for v in result.losses):
            raise RuntimeError(f"non-finite pre-training loss {result.losses}")
        embeddings = embed_graphs(result.model, data).numpy().astype(np.float64)
        accuracy, C = svm_accuracy(
            embeddings[train_idx],
            y[train_idx],
            embeddings[test_idx],
            y[test_idx],
            C=list(self.sizes.svm_C),
            inner_folds=self.sizes.svm_inner_folds,
        )
        key = f"SVM {accuracy:.1f}% on fold 1/10 of {len(y)} {source}"
        metrics = {"svm_accuracy": accuracy, "C": C, "graphs": len(y), "source": source, "losses": result.losses}
        return where, key, metrics

    def ddp(self, quick: bool, device: str = "cuda") -> tuple[str, str, dict]:
        """The pretrain workload on 2 devices (2 GPUs; ``device="cpu"``: 2 CPU processes over gloo) in a child
        process group, ended whole after ``ddp_timeout_s``; each rank reports its own rank, world size and the
        devices its modules ran on."""
        run_dir = self.work / "ddp"
        cmd = [sys.executable, str(GPU_CHECK), "--ddp-worker", str(run_dir), "--device", device]
        if quick:
            cmd.append("--quick")
        log = self.work / "ddp.log"
        code = run_group(cmd, self.sizes.ddp_timeout_s, log)
        if code != 0:
            tail = (log.read_text().strip().splitlines() or ["?"])[-1]
            sys.stderr.write(log.read_text()[-4000:])
            raise RuntimeError(f"worker exit {code}: {tail}")
        ranks = [json.loads(p.read_text()) for p in sorted(run_dir.glob("rank*.json"))]
        row, summary = read_run(run_dir)
        problems = check_ranks(ranks, device)
        loss = finite(row["loss"], "the epoch's loss")
        rate = float(row["images_per_s"])
        key = f"{rate:.0f} img/s over {len(ranks)} processes, {summary['precision']}, loss {loss:.3f}"
        metrics = {"images_per_s": rate, "loss": loss, "precision": summary["precision"], "ranks": ranks}
        if problems:
            raise failure("; ".join(problems), key, metrics)
        return f"2x {device}", key, metrics


def check_ranks(ranks: list[dict], device: str) -> list[str]:
    """What is wrong with the reports of a 2-process run: not two ranks 0 and 1 in two processes, each in a process
    group of 2, each with its modules on its own GPU (``cuda:rank``; none on another GPU) or on the CPU."""
    if sorted(r["rank"] for r in ranks) != [0, 1] or len({r["pid"] for r in ranks}) != 2:
        return [f"expected ranks 0 and 1 in 2 processes, got {[(r['rank'], r['pid']) for r in ranks]}"]
    problems = []
    for r in ranks:
        if r["world_size"] != 2:
            problems.append(f"rank {r['rank']} ran in a process group of {r['world_size']}")
        on = [d for d in r["devices"] if d.startswith(device)]  # on GPUs: CPU modules are allowed besides
        want = [f"cuda:{r['rank']}"] if device == "cuda" else ["cpu"]
        if on != want:
            problems.append(f"rank {r['rank']} ran its modules on {r['devices']}, not {want}")
    return problems


def tiny_graphs():
    """40 small graphs, cycles (class 0) against stars (class 1), with one-hot random node features."""
    from hscl.data.graphs import graphs_from_lists

    generator = torch.Generator().manual_seed(0)
    features, edges, labels = [], [], []
    for g in range(40):
        n = 4 + g % 5
        pairs = [(i, (i + 1) % n) for i in range(n)] if g % 2 == 0 else [(0, i) for i in range(1, n)]
        e = torch.tensor(pairs).T
        edges.append(torch.cat([e, e.flip(0)], 1))
        features.append(torch.nn.functional.one_hot(torch.randint(0, 3, (n,), generator=generator), 3).float())
        labels.append(g % 2)
    return graphs_from_lists("tiny", features, edges, labels, ["cycle", "star"])


def ddp_worker(args, sizes) -> None:
    """One rank of the 2-device run (Lightning starts rank 1 by running this same command again); writes
    ``rank<r>.json`` with what this process saw: its rank and process group size, its pid, its modules' devices."""
    quiet_lightning()
    from gpu_check_data import load_images
    from hscl.engine.pretrain.run import train

    data, _ = load_images(sizes)
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"  # cpu: a gloo run, to test this path
    with ModuleWatch() as watch:
        train(run_config(sizes, accelerator, devices=2), Path(args.ddp_worker), data=data)
    if watch.world is None:
        raise RuntimeError("no module ran inside a torch.distributed process group")
    rank, world = watch.world
    report = {"rank": rank, "world_size": world, "pid": os.getpid(), "devices": sorted(watch.devices)}
    (Path(args.ddp_worker) / f"rank{rank}.json").write_text(json.dumps(report))
