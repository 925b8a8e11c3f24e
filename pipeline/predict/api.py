"""The Python API of inference, without Hydra: an ensemble's probabilities on a folder or table of images.

>>> pred = predict_images("outputs/demo/demo", "data/fashion-mnist-demo/test", policy="ten_crop")  # doctest: +SKIP
>>> pred.probs.shape, pred.classes[:2]  # doctest: +SKIP
((2000, 10), ['T-shirt/top', 'Trouser'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import ConfigError
from pipeline.core.reduce import merge_members
from pipeline.core.task import Task
from pipeline.data.fingerprint import split_tag
from pipeline.data.spec import DataSpec
from pipeline.data.tables import ImageTable, read_test_table
from pipeline.member.folder import Member, find_members
from pipeline.member.predictions import read_predictions
from pipeline.predict.ensemble import caruana_bagged, group_models, resolve_weights
from pipeline.predict.plan import policy_key
from pipeline.predict.runner import predict_members
from pipeline.predict.spec import PredictOptions
from pipeline.predict.targets import members_task
from pipeline.predict.tta import TTAPolicy, create_policy

__all__ = ["Prediction", "image_table", "predict_images", "fit_ensemble_weights"]


@dataclass
class Prediction:
    """An ensemble's class probabilities for a set of images.

    Attributes:
        ids: One id per row (file stems for a folder).
        probs: ``[N, K]`` probabilities, rows summing to one.
        classes: The K class names, in column order (other tasks: their output columns).
        task: The members' task when it is not one class per image (``probs`` then holds its outputs:
            independent probabilities per label, or values).
    """

    ids: list[str]
    probs: np.ndarray
    classes: list[str]
    task: Task | None = None  # None: one class per image; else the members' task (probs: its outputs)

    def labels(self) -> list[str]:
        """The top-1 class name of each row (ties to the lower class index)."""
        return [self.classes[i] for i in self.probs.argmax(axis=1)]


def image_table(images: str | Path | ImageTable | DataSpec, classes: Sequence[str]) -> ImageTable:
    """The images :func:`predict_images` takes, as a table: a folder, an :class:`ImageTable` or a :class:`DataSpec`."""
    if isinstance(images, ImageTable):
        return images
    if isinstance(images, DataSpec):
        return read_test_table(images, classes)
    folder = Path(images)
    return read_test_table(DataSpec(root=str(folder), test_dir=".", sample_submission=None), classes)


def predict_images(
    members: str | Path | Sequence[str | Path] | Sequence[Member],
    images: str | Path | ImageTable | DataSpec,
    policy: str | TTAPolicy = "ten_crop",
    weights: Mapping[str, float] | Sequence[float] | None = None,
    options: PredictOptions | None = None,
    method: str = "prob_mean",
) -> Prediction:
    """Predict ``images`` with every completed member and merge them into one ensemble prediction.

    Each member is predicted at its recorded image and crop size (members trained at different
    resolutions mix freely). K-fold members of one model are averaged first; models are then merged with
    ``weights`` (one per model, in :func:`~pipeline.predict.ensemble.group_models` order, or a mapping
    naming every model, as ``ensemble.json`` of an export holds it; None: equal); a model of weight 0 is not
    predicted at all. Per-member predictions
    are cached (see :mod:`pipeline.member.cache`; read-only member folders cache in the system's
    temporary folder unless ``options.prediction_cache_dir`` is set).

    Args:
        members: Member folders: a sweep folder, an export, a glob, a list of folders, or :class:`Member` objects.
        images: A folder of images, an :class:`ImageTable`, or a :class:`DataSpec` whose test set to read.
        policy: A registered TTA policy name (each member cropped at its recorded crop size) or a built policy
            (a ``crop_size`` that contradicts a member's needs ``options.allow_crop_override``).
        weights: Model weights, see above.
        options: Device, precision, batch size...; None uses the defaults.
        method: How fold members and models are merged (``prob_mean``, ``logit_mean``, ``geo_mean``, ``max``);
            views are merged by ``options.view_reduce``.

    Raises:
        ConfigError: ``weights`` does not name exactly the models, or an option is invalid.
    """
    if not isinstance(members, (str, Path)) and members and all(isinstance(m, Member) for m in members):
        found = [m for m in members if isinstance(m, Member)]
    else:
        found, _ = find_members(members)  # type: ignore[arg-type]
    classes = list(found[0].manifest.classes)
    task = members_task(found)
    normalize = task.softmax  # multi-label probabilities and values are averaged as they are
    if isinstance(policy, str):
        policy = create_policy(policy)
    opts = options or PredictOptions()
    models = group_models(found)
    if isinstance(weights, Mapping):
        if set(weights) != set(models):
            raise ConfigError(f"weights name the models {sorted(weights)}, but the members form the models {sorted(models)}")
        weights = [float(weights[name]) for name in models]
    w = resolve_weights("equal" if weights is None else "given", len(models), weights)
    table = image_table(images, classes)
    tag = split_tag("test", table)
    key = policy_key(policy)
    # A model of weight 0 costs nothing: its members are never predicted (the kit runs this under a time limit).
    active = [name for name, weight in zip(models, w) if weight > 0]
    todo = [m for name in active for m in models[name]]
    files = predict_members(todo, table, tag, {key: policy}, opts)
    model_probs = []
    for name in active:
        per_member = [read_predictions(files[(m.name, key)], classes)[1] for m in models[name]]
        model_probs.append(merge_members(per_member, method=method, normalize=normalize).numpy())
    ids = read_predictions(files[(todo[0].name, key)], classes)[0]
    kept = [float(weight) for weight in w if weight > 0]
    merged = merge_members(model_probs, weights=kept, method=method, normalize=normalize).numpy()
    return Prediction(ids, merged, classes, None if task.kind == "multiclass" else task)


def fit_ensemble_weights(
    oof_probs: Sequence[np.ndarray], labels: np.ndarray, metric: str = "log_loss", rounds: int = 50,
    method: str = "prob_mean", bags: int = 1, bag_fraction: float = 0.5, seed: int = 0,
) -> np.ndarray:
    """Caruana weights for models from their out-of-fold probabilities (never fit them on test rows).

    Args:
        oof_probs: One ``[N, K]`` array per model, rows aligned.
        labels: ``[N]`` integer labels.
        metric: Registered metric the weights are fitted for (its direction is respected).
        rounds: Greedy selection rounds.
        method: How models are merged.
        bags: More than one: bagged selection (Caruana et al. 2004) over random subsets of the models.
        bag_fraction: Share of the models each bag draws.
        seed: Seed of the bags (same seed, same weights).

    Returns:
        One weight per model, summing to one.
    """
    from pipeline.core.metrics import get_metric

    return caruana_bagged(list(oof_probs), np.asarray(labels), bags, bag_fraction, seed, rounds,
                          metric=get_metric(metric), method=method)
