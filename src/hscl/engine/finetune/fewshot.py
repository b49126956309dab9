"""Few-shot fine-tuning: N-way K-shot episodes, paired confidence intervals, embedding quality.

Few-shot, as in SCHaNe's few-shot experiments: N-way K-shot episodes on classes held out from
pre-training. Each episode draws ``ways`` classes and, by the protocol of the few-shot papers, ``shots`` support
and ``queries`` query images of each from ALL the images of the class (the training and test splits pooled;
disjoint within the episode, drawn anew for every episode; ``draw="split"``: support from the training split,
queries from the test split), fine-tunes a copy of the pre-trained model with a fresh linear head on the support
set for ``steps`` full-batch steps (the objectives and steps of :mod:`hscl.engine.finetune.loop`), and scores the
queries. An objective with no cross-entropy term (SCHaNe at ``lam = 1``) gives its head no gradient; its head is
fitted afterwards on the frozen fine-tuned features of the support set (:func:`fit_linear_head`). The drawing and
the fitted head are in :mod:`hscl.engine.finetune.episodes`. Every objective sees the same episodes, the same initial
weights and the same augmentation draws, so their accuracies are paired. The pre-trained model is an
hscl :class:`~hscl.models.ContrastiveModel` or any :class:`~hscl.models.Backbone` (each episode fine-tunes a
fresh copy of the same weights; a projection head a Backbone gets is drawn from the episode's seed, so it is the
same for every objective of an episode). Episodes run on ``device`` (``"auto"``: a CUDA GPU when there is one):
the pre-trained model is copied there once, each episode's support and query images once.

Reference: Long et al., "When hard negative sampling meets supervised contrastive learning", arXiv
2308.14893 (SCHaNe).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from hscl.data.augment import Augment, AugmentConfig, EvalTransform, preset_for
from hscl.data.images import ImageData
from hscl.data.views import epoch_generator
from hscl.engine.finetune.config import BN_MODES, FinetuneConfig
from hscl.engine.finetune.episodes import DRAWS, episode_images, fit_linear_head, fits_head, sample_episode
from hscl.engine.finetune.loop import (
    FineTuneModel,
    FinetuneObjective,
    _set_train_mode,
    accuracy,
    backbone_input,
    make_optimizer,
    predict,
    resolve_loop_precision,
    train_step,
)
from hscl.engine.runtime.distributed import resolve_device, same_device, to_device
from hscl.engine.runtime.precision import LoopPrecision, loop_flags
from hscl.models import Backbone, ContrastiveModel
from hscl.validation import check_choice, check_int, check_real

__all__ = [
    "FewShotConfig",
    "embedding_isotropy",
    "few_shot",
    "mean_ci95",
    "paired_ci95",
    "run_episode",
    "tsne_figure",
]


@dataclass
class FewShotConfig:
    """N-way K-shot episodes.

    Attributes:
        ways: classes per episode ``N`` (drawn from the held-out classes).
        shots: support images per class ``K``; one set of episodes per value.
        queries: query images per class.
        episodes: episodes per ``K``.
        draw: ``"all"`` (support and queries from all the images of a class) or ``"split"`` (see :data:`DRAWS`).
        steps: full-batch fine-tuning steps on the support set of an episode.
        lr, bn: the per-episode optimiser learning rate and batch-norm mode (see :class:`FinetuneConfig`).
        seed: the episodes follow from ``(seed, K, episode)``.
    """

    ways: int = 5
    shots: list[int] = field(default_factory=lambda: [1, 5, 10])
    queries: int = 15
    episodes: int = 100
    steps: int = 30
    lr: float = 1e-3
    bn: str = "frozen"
    seed: int = 0
    draw: str = "all"

    def __post_init__(self) -> None:
        self.ways = check_int("ways", self.ways, 2)
        if not self.shots:
            raise ValueError("shots must list at least one K >= 1")
        self.shots = [check_int("shots", k, 1) for k in self.shots]
        self.queries = check_int("queries", self.queries, 1)
        self.episodes = check_int("episodes", self.episodes, 1)
        self.steps = check_int("steps", self.steps, 1)
        self.lr = check_real("lr", self.lr, 0.0, math.inf, low_open=True)
        self.bn = check_choice("bn", self.bn, BN_MODES)
        self.seed = check_int("seed", self.seed, 0)
        self.draw = check_choice("draw", self.draw, DRAWS)


# --------------------------------------------------------------------------------------------
# few-shot episodes


def run_episode(
    pretrained: ContrastiveModel | Backbone,
    support_images: Tensor,
    support_labels: Tensor,
    query_images: Tensor,
    query_labels: Tensor,
    config: FinetuneConfig,
    *,
    steps: int,
    augment: AugmentConfig,
    seed: int,
    device: str | torch.device | None = None,
    precision: str | LoopPrecision | None = None,
) -> float:
    """Fine-tune a copy of ``pretrained`` on one support set for ``steps`` full-batch steps; query accuracy (%).

    Shapes: support ``(ways * K, C, H, W)`` uint8 and ``(ways * K,)``; queries likewise. The augmentation
    draws and everything else random follow from ``seed`` alone. Runs on ``device`` (None: the device of
    ``pretrained``; ``"auto"``: a CUDA GPU when there is one) in ``precision`` (as
    :func:`~hscl.engine.finetune.loop.finetune`'s: a setting, a
    :class:`~hscl.engine.runtime.precision.LoopPrecision`, or
    None: an enclosing scope's choice, else ``auto``). A Backbone sees the images in ``[0, 1]``
    (:func:`~hscl.engine.finetune.loop.backbone_input`); a projection head it gets is drawn from ``seed``. When the
    objective has no cross-entropy term (:func:`fits_head`), the head is fitted after the fine-tuning steps on the
    frozen features of the un-augmented support images (:func:`fit_linear_head`).
    """
    device = next(pretrained.parameters()).device if device is None else resolve_device(device)
    ways = int(support_labels.max()) + 1
    augment, config = backbone_input(pretrained, augment), config.resolved(pretrained)
    torch.manual_seed(seed)  # a new projection head (a Backbone's): the same for every objective of an episode
    model = FineTuneModel(copy.deepcopy(pretrained), ways, config.embedding).to(device)
    eval_tf = EvalTransform(augment).to(device)
    numerics = resolve_loop_precision(precision, model, eval_tf, support_images, device)
    if numerics.channels_last:
        model = model.to(memory_format=torch.channels_last)
    objective = FinetuneObjective.from_config(config)
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    scaler = numerics.grad_scaler(device)
    train_aug = Augment(augment).to(device)
    support_images, support_labels = to_device(support_images, device), to_device(support_labels, device)
    _set_train_mode(model, config.bn)
    torch.manual_seed(seed)
    with warnings.catch_warnings(), loop_flags(device):  # 1-shot, one view: no positives, the contrastive term is 0
        warnings.filterwarnings("ignore", message=".*no valid.*|.*no anchor.*")
        for _ in range(steps):
            train_step(
                model, objective, optimizer, train_aug, support_images, support_labels, config.views,
                numerics=numerics, scaler=scaler,
            )  # fmt: skip
            scheduler.step()
        if fits_head(config):
            fit_linear_head(model, support_images, support_labels, eval_tf)
        logits = predict(model, query_images, eval_tf, numerics=numerics)
    return accuracy(logits, query_labels)


def _episode_seed(seed: int, shots: int, episode: int) -> int:
    return int(epoch_generator(seed, shots, 1 + episode).initial_seed())


def few_shot(
    pretrained: ContrastiveModel | Backbone,
    data: ImageData,
    classes: Sequence[int],
    configs: Mapping[str, FinetuneConfig],
    fewshot: FewShotConfig,
    *,
    augment: AugmentConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device | None = "auto",
    precision: str | LoopPrecision | None = None,
) -> dict[int, list[dict]]:
    """Paired few-shot evaluation: for each K in ``fewshot.shots``, ``fewshot.episodes`` episodes, each run
    with every config of ``configs`` (name -> config) on the same support / query sets and seeds.

    Returns ``{K: [{"episode": e, "classes": [...], "accuracy": {name: %}}, ...]}``. With ``out_dir``, each
    finished episode is appended to ``out_dir/<K>shot.jsonl``; ``resume=True`` skips the episodes found
    there, ``resume=False`` refuses to overwrite them. Runs on ``device`` (``"auto"``: a CUDA GPU when there
    is one, else the CPU) in ``precision`` (decided once for every episode, as
    :func:`~hscl.engine.finetune.loop.finetune` decides it; recorded in ``out_dir/setting.json``). ``pretrained`` is
    a ContrastiveModel or a Backbone; each config's ``embedding`` None is resolved for it
    (:meth:`~hscl.engine.finetune.loop.FinetuneConfig.resolved`).
    """
    from tqdm.auto import tqdm

    configs = {name: config.resolved(pretrained) for name, config in configs.items()}
    device = resolve_device(device)
    if not same_device(next(pretrained.parameters()).device, device):
        pretrained = copy.deepcopy(pretrained).to(device)  # once; each episode copies it on the device

    augment = augment or preset_for(data.channels, data.size)
    rows = fewshot.ways * max(fewshot.shots) * max(c.views for c in configs.values())
    transform = EvalTransform(backbone_input(pretrained, augment)).to(device)
    numerics = _stored_numerics(out_dir, resume) or resolve_loop_precision(
        precision, pretrained, transform, data.train_images[:rows], device
    )
    # what an episode's result depends on besides (K, episode): rows of another setting are never mixed in
    setting = {
        "objectives": {name: dataclasses.asdict(c) for name, c in configs.items()},
        "fewshot": {k: v for k, v in dataclasses.asdict(fewshot).items() if k not in ("shots", "episodes")},
        "classes": [int(c) for c in classes],
        "data": data.name,
        "numerics": {"precision": numerics.precision, "channels_last": numerics.channels_last},
    }
    setting = json.loads(json.dumps(setting))
    if out_dir is not None:
        out_dir = Path(out_dir)
        _check_setting(out_dir, setting, resume)
    results: dict[int, list[dict]] = {}
    for shots in fewshot.shots:
        log_file = out_dir / f"{shots}shot.jsonl" if out_dir is not None else None
        done = _finished_episodes(log_file)
        bar = tqdm(range(fewshot.episodes), desc=f"{fewshot.ways}-way {shots}-shot episodes", disable=not progress)
        for e in bar:
            if e in done:
                continue
            row = _episode_row(pretrained, data, classes, configs, fewshot, shots, e, augment, numerics)
            done[e] = row
            if log_file is not None:
                with log_file.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
            bar.set_postfix({n: f"{sum(r['accuracy'][n] for r in done.values()) / len(done):.1f}" for n in configs})
        results[shots] = [done[e] for e in range(fewshot.episodes)]
    return results


def _stored_numerics(out_dir: str | Path | None, resume: bool) -> LoopPrecision | None:
    """The numerics of the episodes already in ``out_dir`` when resuming them (a resumed run keeps them)."""
    setting_file = None if out_dir is None else Path(out_dir) / "setting.json"
    if not resume or setting_file is None or not setting_file.exists():
        return None
    stored = json.loads(setting_file.read_text()).get("numerics")
    return None if stored is None else LoopPrecision(stored["precision"], stored["channels_last"])


def _check_setting(out_dir: Path, setting: dict, resume: bool) -> None:
    """Refuse to continue the episodes of ``out_dir`` unless resuming the same setting; (re)write
    ``out_dir/setting.json``."""
    setting_file = out_dir / "setting.json"
    if setting_file.exists():
        if not resume:
            raise FileExistsError(
                f"{out_dir} holds few-shot episodes of an earlier run; pass --resume to continue it or choose "
                "another --out directory"
            )
        stored = json.loads(setting_file.read_text())
        # a setting written before hscl recorded the episodes' numerics is compared without them
        if stored != {k: v for k, v in setting.items() if k in stored or k != "numerics"}:
            raise ValueError(
                f"{out_dir} holds episodes of another setting ({setting_file}); this run is {setting}; choose "
                "another output directory"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    setting_file.write_text(json.dumps(setting, indent=2))


def _finished_episodes(log_file: Path | None) -> dict[int, dict]:
    """The episodes already in ``log_file`` (episode -> row); the file is rewritten without a partial last line."""
    done: dict[int, dict] = {}
    if log_file is not None and log_file.exists():
        for line in log_file.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the line being written when a run was killed
                continue
            done[row["episode"]] = row
        log_file.write_text("".join(json.dumps(row) + "\n" for row in done.values()))
    return done


def _episode_row(
    pretrained: ContrastiveModel | Backbone,
    data: ImageData,
    classes: Sequence[int],
    configs: Mapping[str, FinetuneConfig],
    fewshot: FewShotConfig,
    shots: int,
    e: int,
    augment: AugmentConfig,
    numerics: LoopPrecision | None = None,
) -> dict:
    """Episode ``e`` of ``shots``-shot, run with every config: ``{"episode", "classes", "accuracy": {name: %}}``."""
    seed = _episode_seed(fewshot.seed, shots, e)
    episode = sample_episode(
        data.train_labels,
        data.test_labels,
        classes,
        ways=fewshot.ways,
        shots=shots,
        queries=fewshot.queries,
        generator=torch.Generator().manual_seed(seed),
        draw=fewshot.draw,
    )
    device = next(pretrained.parameters()).device  # the episode's images go there once, for every config
    sup_x = to_device(episode_images(data, episode.support_index), device)
    qry_x = to_device(episode_images(data, episode.query_index), device)
    row = {"episode": e, "classes": episode.classes, "accuracy": {}}
    for name, config in configs.items():
        row["accuracy"][name] = run_episode(
            pretrained,
            sup_x,
            episode.support_labels,
            qry_x,
            episode.query_labels,
            config,
            steps=fewshot.steps,
            augment=augment,
            seed=seed,
            precision=numerics,
        )
    return row


# --------------------------------------------------------------------------------------------
# statistics


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student t, ``n - 1`` degrees of freedom).

    The half-width is NaN for fewer than two values.
    """
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    from scipy import stats

    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)


def paired_ci95(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean of ``a - b`` over paired samples and the half-width of its 95% CI (see :func:`mean_ci95`)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples must have the same length, got {len(a)} and {len(b)}")
    return mean_ci95([x - y for x, y in zip(a, b)])


# --------------------------------------------------------------------------------------------
# embedding quality


def embedding_isotropy(x: Tensor, symmetric: bool = False) -> float:
    """:func:`hscl.geometry.isotropy` of the L2-normalised rows of ``x`` ``(N, d)`` (the cosine geometry the
    contrastive term sees; encoder features have arbitrary norms), in float64 on a CPU copy of ``x``: Mu and
    Viswanath's score over the eigenvectors, or with ``symmetric`` over the eigenvectors and their negatives."""
    from hscl.geometry import isotropy

    return float(isotropy(F.normalize(x.detach().cpu().double(), dim=1), symmetric=symmetric))


def tsne_figure(
    path: str | Path,
    embeddings: Mapping[str, Tensor],
    labels: Tensor,
    class_names: Sequence[str],
    seed: int = 0,
    title: str | None = None,
) -> None:
    """Side-by-side t-SNE maps (scikit-learn) of ``{name: (N, d) embeddings}``, coloured by class; PNG + CSV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    from hscl.engine.evaluation.report import write_table

    labels = labels.cpu()
    fig, axes = plt.subplots(1, len(embeddings), figsize=(5.2 * len(embeddings), 4.8), dpi=120, squeeze=False)
    rows = []
    cmap = plt.get_cmap("tab10")
    for ax, (name, x) in zip(axes[0], embeddings.items()):
        x = F.normalize(x.detach().cpu().double(), dim=1).numpy()
        points = TSNE(n_components=2, init="pca", perplexity=30.0, random_state=seed).fit_transform(x)
        for c, cname in enumerate(class_names):
            mask = (labels == c).numpy()
            ax.scatter(points[mask, 0], points[mask, 1], s=4, color=cmap(c % 10), label=cname)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
        rows += [[name, float(p[0]), float(p[1]), int(y)] for p, y in zip(points, labels.tolist())]
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=3, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    write_table(Path(path).with_suffix(".csv"), ["model", "tsne_x", "tsne_y", "label"], rows)
