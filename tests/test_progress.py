"""Progress bars: none when stderr is not a terminal (CI logs), a bar when forced; the items pass through unchanged."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.core.progress import ENV, progress, progress_enabled


def test_no_bar_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert list(progress(range(5), 5, "Counting", unit="img")) == [0, 1, 2, 3, 4]
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert not progress_enabled()


def test_forced_bar_shows_description_count_and_rate(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "1")
    batches = [[1, 2, 3], [4, 5], [6]]
    assert list(progress(batches, 6, "Predicting test", unit="img", size=len)) == batches
    err = capsys.readouterr().err
    assert "Predicting test" in err and "6/6" in err  # counted in images, not in batches


def test_force_argument_wins_over_the_environment(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "1")
    assert list(progress(range(3), 3, "Quiet", force=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(ENV, "0")
    list(progress(range(3), 3, "Loud", force=True))
    assert "Loud" in capsys.readouterr().err


def test_a_long_description_is_cut_not_the_count_rate_or_time_left(capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """At 100 columns the bar line keeps done/total, the rate and both times; the description ends in "…"."""
    import re
    import time

    monkeypatch.setenv("COLUMNS", "100")
    desc = "Predicting test (4 members × ten_crop, 2 members × multiscale, 12 views, chunk 512, bf16, channels_last)"

    def slow(n: int) -> Iterator[int]:  # a measurable rate
        for i in range(n):
            time.sleep(0.002)
            yield i

    list(progress(slow(20), 20 * 64, desc, unit="img", size=lambda _: 64, force=True))
    plain = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", capsys.readouterr().err)
    last = [line for line in re.split(r"[\r\n]", plain) if line.strip()][-1]
    assert len(last.rstrip()) <= 100
    assert re.search(r"… ━+ 1280/1280 [\d,]+ img/s \d:\d\d:\d\d \d:\d\d:\d\d$", last.rstrip()), last
    assert last.startswith("Predicting test (4 members")
