"""The offline kit: everything a notebook without internet needs to predict with an exported ensemble.

``pipeline-export MEMBERS --kit DIR [--predict-dir P] [--wheel W]`` writes::

    DIR/members/        the export (:mod:`pipeline.member.export`): members, ensemble.json with fitted weights
    DIR/wheels/         pipeline-<version>-py3-none-any.whl, this package without its dependencies
    DIR/predict.py      installs the wheel with ``pip install --no-index --no-deps --find-links DIR/wheels``,
                        then predicts a folder of test images with the Python API and writes the submission
    DIR/README.md       the commands

Kaggle's notebook image already has torch, torchvision, timm, albumentations, pandas and scikit-learn, so
the wheel is installed without dependencies. The wheel is taken from ``--wheel``; else built from the
source tree with ``pip wheel --no-deps`` (an editable install); else, for a package installed from a wheel
file, that file (pip records it in the installation's ``direct_url.json``) when it is still there.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from pipeline.core.errors import ConfigError
from pipeline.member.export import export_ensemble

__all__ = ["KIT_SCRIPT", "WHEELS", "MEMBERS", "build_kit", "build_wheel", "installed_wheel"]

log = logging.getLogger(__name__)

KIT_SCRIPT = "predict.py"
WHEELS = "wheels"
MEMBERS = "members"
_WHEEL_NAME = re.compile(r"pipeline-[^-]+-.+\.whl")
_SOURCE = ("pyproject.toml", "README.md", "pipeline")
_PACKAGE = Path(__file__).resolve().parent.parent


def _source_tree() -> Path | None:
    """The checkout this package runs from (an editable install), or None when it is installed from a wheel."""
    root = _PACKAGE.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and re.search(r'(?m)^name = "pipeline"', pyproject.read_text()):
        return root
    return None


def installed_wheel() -> Path | None:
    """The wheel file this package was installed from, if pip recorded it and it still exists."""
    from importlib import metadata

    try:
        record = metadata.distribution("pipeline").read_text("direct_url.json")
        url = urlparse(json.loads(record or "{}").get("url", ""))
    except (metadata.PackageNotFoundError, ValueError, AttributeError):
        return None
    path = Path(unquote(url.path))
    return path if url.scheme == "file" and _WHEEL_NAME.fullmatch(path.name) and path.is_file() else None


def build_wheel(dest: str | Path) -> Path:
    """Build this package's wheel (no dependencies) into ``dest`` from a copy of its source tree.

    Only ``pyproject.toml``, ``README.md`` and ``pipeline/`` are copied, so the checkout gets no
    ``build/`` or ``*.egg-info`` folders and run outputs never enter the wheel.

    Raises:
        ConfigError: The package is not installed from a source tree, or the build fails (the message
            holds pip's output).
    """
    root = _source_tree()
    if root is None:
        raise ConfigError(f"pipeline is installed from a wheel ({_PACKAGE.parent}), not from its source "
                          "tree, so no wheel can be built here; pass the wheel with --wheel PATH.")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in _SOURCE:
            item = root / name
            if item.is_dir():
                shutil.copytree(item, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
            elif item.is_file():
                shutil.copy2(item, src / name)
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                               "-w", tmp, str(src)], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise ConfigError(f"Building the pipeline wheel from {root} failed (pass --wheel PATH instead):\n"
                              f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        (wheel,) = Path(tmp).glob("pipeline-*.whl")
        return Path(shutil.copy2(wheel, dest / wheel.name))


def _kit_wheel(tmp: str) -> Path:
    """The wheel to ship when no ``--wheel`` is given: built from the source tree, else the one installed from."""
    if _source_tree() is not None:
        return build_wheel(tmp)
    if (found := installed_wheel()) is None:
        raise ConfigError(f"pipeline is installed from a wheel ({_PACKAGE.parent}), not from its source tree, and pip "
                          "recorded no wheel file that still exists; pass the wheel with --wheel PATH.")
    log.info("Shipping the wheel pipeline was installed from: %s", found)
    return found


def _check_kit_dir(kit: Path) -> None:
    if kit.exists() and (not kit.is_dir() or (any(kit.iterdir()) and not (kit / KIT_SCRIPT).is_file())):
        raise ConfigError(f"--kit {kit} exists and is not a kit folder (no {KIT_SCRIPT}); choose a new or empty folder.")


def build_kit(members_spec: str | Path | list[str] | list[Path], kit_dir: str | Path,
              predict_dir: str | Path | None = None, wheel: str | Path | None = None) -> Path:
    """Write the offline kit into ``kit_dir`` (see the module docstring); return ``kit_dir``.

    Args:
        members_spec: A sweep folder, a glob, or a list of member folders.
        kit_dir: The kit folder (created; an earlier kit there is updated).
        predict_dir: A predict folder made with these members: its weights and submission policy are shipped.
        wheel: A ``pipeline-*.whl`` to ship instead of building one from the source tree.

    Raises:
        ConfigError: ``wheel`` is missing or not a pipeline wheel, ``kit_dir`` holds something else, or no
            wheel can be built. Nothing is written then.
    """
    kit = Path(kit_dir)
    _check_kit_dir(kit)
    if wheel is not None and (not Path(wheel).is_file() or not _WHEEL_NAME.fullmatch(Path(wheel).name)):
        raise ConfigError(f"--wheel {wheel}: expected an existing pipeline-<version>-*.whl file")
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(wheel) if wheel is not None else _kit_wheel(tmp)  # before anything is written
        export_ensemble(members_spec, kit / MEMBERS, predict_dir)
        (kit / WHEELS).mkdir(exist_ok=True)
        for old in (kit / WHEELS).glob("pipeline-*.whl"):
            old.unlink()
        shutil.copy2(built, kit / WHEELS / built.name)
    (kit / KIT_SCRIPT).write_text(_SCRIPT)
    (kit / "README.md").write_text(_README)
    log.info("Offline kit written to %s", kit)
    return kit


_README = """# Offline prediction kit

Made by `pipeline-export --kit`. Upload this folder as a Kaggle data set, attach it to the notebook
(internet off), then in a cell:

    !python /kaggle/input/<this data set>/predict.py --images /kaggle/input/<competition>/test \\
        --sample /kaggle/input/<competition>/sample_submission.csv --out /kaggle/working/submission.csv

`predict.py` installs `wheels/pipeline-*.whl` with `pip install --no-index --no-deps` (the notebook image
has torch, timm, albumentations and pandas) and predicts with the members in `members/` at their
recorded image and crop sizes, merged with the weights in `members/ensemble.json`. `--time-budget SECONDS`
times each model on a few test images first and predicts only the plan that fits. Without `--sample` it
writes `id,label,<one probability column per class>`; `--kind topk --k 5` writes the five best class
names per row. `python predict.py --help` lists every option.
"""

_SCRIPT = '''"""Offline prediction with a pipeline kit (made by `pipeline-export --kit`); needs no internet.

    python predict.py --images TEST_FOLDER --out submission.csv [--sample sample_submission.csv]
                      [--kind label|probabilities|label+probabilities|topk] [--k K] [--device auto]
                      [--time-budget SECONDS]

It installs the kit's wheel (pip install --no-index --no-deps --find-links <kit>/wheels), then runs
pipeline.predict_images on the members in <kit>/members with the weights and TTA policy in
members/ensemble.json, and pipeline.write_submission_file. With --time-budget it first times each model on a
few test images and predicts only the plan that fits (pipeline.predict.timed), and prints the plan.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from importlib import metadata, util
from pathlib import Path

KIT = Path(__file__).resolve().parent


def install() -> None:
    """Install the kit's pipeline wheel from the kit alone, unless that version is installed already."""
    wheels = sorted((KIT / "wheels").glob("pipeline-*.whl"))
    if not wheels:
        sys.exit(f"{KIT / 'wheels'} holds no pipeline wheel (pipeline-*.whl), so this kit cannot install pipeline "
                 "offline. Rebuild the kit with `pipeline-export MEMBERS --kit DIR` and upload the whole folder.")
    version = wheels[-1].name.split("-")[1]
    try:
        if util.find_spec("pipeline") is not None and metadata.version("pipeline") == version:
            return
    except metadata.PackageNotFoundError:
        pass
    # --ignore-installed: never uninstall a pipeline some other path provides, install this one beside it.
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--ignore-installed",
                    "--find-links", str(KIT / "wheels"), f"pipeline=={version}"], check=True)
    importlib.invalidate_caches()


def test_set(images: str, sample: str | None) -> object:
    """The folder (ids: file names without extension), or, when the sample's ids are the file names themselves
    (competitions whose ids keep their extension, a1.jpg), a DataSpec that takes the ids from the sample."""
    if sample:
        import csv

        from pipeline.data.spec import DataSpec

        with open(sample, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
        ids = [row[0] for row in rows[1:] if row]
        if ids and all(Path(i).suffix and (Path(images) / i).is_file() for i in ids):
            return DataSpec(root=images, test_dir=".", test_csv=str(Path(sample).resolve()), id_col=rows[0][0], ext="",
                            sample_submission=None)
    return images


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Predict a folder of images with this kit's ensemble.")
    parser.add_argument("--images", required=True, help="folder of test images (ids are the file names without "
                        "suffix, or the sample's ids when they are the file names with their suffix)")
    parser.add_argument("--out", default="submission.csv", help="submission file to write")
    parser.add_argument("--sample", default=None, help="sample_submission.csv: its header and row order are kept")
    parser.add_argument("--kind", default=None, help="label | probabilities | label+probabilities | topk")
    parser.add_argument("--k", type=int, default=None, help="classes per row for --kind topk")
    parser.add_argument("--label-as", default=None, help="name (default) or index")
    parser.add_argument("--policy", default=None, help="TTA policy name (default: the kit's submission policy)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--cache-dir", default=None, help="prediction cache (default: the system temporary folder)")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds the whole test set may take here: "
                        "each model is timed on a few test images first, and only the plan that fits is predicted")
    parser.add_argument("--probe-images", type=int, default=16, help="test images each model is timed on")
    args = parser.parse_args(argv)
    install()

    import pipeline
    from pipeline.predict.spec import PredictOptions
    from pipeline.predict.tta import create_policy

    from pipeline.core.errors import PipelineError
    from pipeline.member.export import read_ensemble

    members = KIT / "members"
    try:
        ens = read_ensemble(members)  # a NaN or negative weight is refused, naming the file
    except PipelineError as err:
        sys.exit(f"predict.py: {err}")
    fitted = ens.get("weights") or {}
    specs = {k: {f: v for f, v in p.items() if f != "views"} for k, p in (ens.get("policies") or {}).items()}
    if ens.get("submission_policy_spec"):
        specs[ens["submission_policy"]] = ens["submission_policy_spec"]
    wanted = args.policy or (specs[ens["submission_policy"]]["name"] if ens.get("submission_policy") in specs else "ten_crop")
    if args.policy is None and ens.get("submission_policy") in specs:
        key = ens["submission_policy"]
    else:  # the first shipped policy of that name, so its fitted weights go with it
        key = next((k for k, spec in specs.items() if spec["name"] == wanted), None)
    policy = create_policy(**specs[key]) if key is not None else create_policy(wanted)
    weights = fitted.get(key) if key is not None else None
    options = PredictOptions(device=args.device, batch_size=args.batch_size, num_workers=args.num_workers,
                             view_reduce=ens.get("view_reduce", "prob_mean"), prediction_cache_dir=args.cache_dir)
    method = (ens.get("ensemble") or {}).get("method", "prob_mean")
    try:
        if args.time_budget is not None:
            from pipeline.predict.timed import predict_within

            pred, plan = predict_within(members, test_set(args.images, args.sample), ens, key or policy.name, policy,
                                        weights, args.time_budget, options, method, args.probe_images)
            print(plan)
        else:
            pred = pipeline.predict_images(members, test_set(args.images, args.sample), policy=policy, weights=weights,
                                           options=options, method=method)
        path = pipeline.write_submission_file(pred, args.out, sample=args.sample, kind=args.kind, k=args.k,
                                              label_as=args.label_as, decision=ens.get("decision"))
    except PipelineError as err:
        sys.exit(f"predict.py: {err}")
    print(f"Submission written: {path} ({len(pred.ids)} rows, policy {policy.name}, weights {weights or 'equal'})")


if __name__ == "__main__":
    main()
'''
