"""Test ids against the sample submission's ids: which differ, and the setting that fixes it.

Kept apart from :mod:`pipeline.data.tables` (which calls it) so the rule has one home: ids that keep their
image extension on one side and not the other, a test folder holding more images than the sample, and
plain mismatches each get their own hint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline.core.errors import DataError, duplicates, examples, id_differences

__all__ = ["IMAGE_EXTENSIONS", "check_sample_ids", "strip_image_ext"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def strip_image_ext(ids: Sequence[str]) -> tuple[set[str], list[str]]:
    """The ids without an image extension, and the ids that had one."""
    stems, with_ext = set(), []
    for i in ids:
        path = Path(i)
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            stems.add(i[: -len(path.suffix)])
            with_ext.append(i)
        else:
            stems.add(i)
    return stems, with_ext


def _id_hint(sample: list[str], test: list[str], only_test: list[str], only_sample: list[str],
             test_csv: str | None, sample_setting: str) -> str:
    """Which way the ids differ and the setting that fixes it."""
    sample_stems, sample_ext = strip_image_ext(sample)
    test_stems, test_ext = strip_image_ext(test)
    if sample_ext and not test_ext and sample_stems == set(test):
        return (
            f". The sample's ids keep their file extension (e.g. {sample_ext[0]!r}) and the test ids do not (they "
            f"are file names without the extension): set data.test_csv={sample_setting} and data.ext='' so the "
            "test ids are the sample's ids and name the files as they are"
        )
    if test_ext and not sample_ext and test_stems == set(sample):
        source = f"data.test_csv ({test_csv})" if test_csv else "the test table"
        return (
            f". The test ids carry a file extension (e.g. {test_ext[0]!r}) and the sample's ids do not: remove the "
            f"extension from the ids in {source}, or leave data.test_csv unset so the ids are the file names "
            "without extension"
        )
    if only_test and not only_sample and not test_csv:
        return (
            f". The test folder holds {len(only_test)} image(s) the sample does not list (are train and test "
            f"images in one folder?): set data.test_csv={sample_setting} to take the test ids from the sample "
            "submission"
        )
    return ""


def check_sample_ids(sample_ids: Sequence[str], test_ids: Sequence[str], sample_path: str | Path, *,
                     test_csv: str | None = None, sample_setting: str | None = None) -> None:
    """Check that the sample submission lists exactly the test images.

    Args:
        sample_ids: the sample submission's ids.
        test_ids: the test table's ids.
        sample_path: the sample submission file, named in the error.
        test_csv: ``data.test_csv`` when the test ids came from a CSV (None: from the test folder).
        sample_setting: ``data.sample_submission`` as configured, for the suggested fix (default: the
            file's name).

    Raises:
        DataError: Naming ``sample_path``, with counts and examples of ids only in the sample
            and only in the test folder, and of duplicated sample ids, plus which way the ids differ
            (a file extension on one side, extra images in the test folder) and the setting that fixes it.
    """
    sample = [str(i) for i in sample_ids]
    test = [str(i) for i in test_ids]
    problems = []
    if dupes := duplicates(sample):
        problems.append(f"{len(dupes)} ids occur more than once in the sample, e.g. {examples(dupes)}")
    only_test, only_sample = id_differences(test, sample)
    source = "the test CSV" if test_csv else "the test folder"
    if only_sample:
        problems.append(f"{len(only_sample)} ids only in the sample, e.g. {examples(only_sample)}")
    if only_test:
        problems.append(f"{len(only_test)} ids only in {source}, e.g. {examples(only_test)}")
    if not problems:
        return
    hint = _id_hint(sample, test, only_test, only_sample, test_csv, sample_setting or Path(sample_path).name)
    raise DataError(
        f"{sample_path}: the {len(sample)} sample submission ids do not match the {len(test)} test "
        f"images: {'; '.join(problems)}{hint}."
    )
