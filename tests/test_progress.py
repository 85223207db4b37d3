"""The one progress reporter (warehouse/progress.py): plain lines, a terminal bar, quiet.

The numbers a user reads (rate, time left) are checked against arithmetic done
here from a controlled clock, not against the reporter's own properties.
"""

from __future__ import annotations

import io
import re
import threading

from psystats.warehouse.progress import format_count, format_duration, progress


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def reporter(stream, clock, **kw):
    r = progress("scoring", kw.pop("total", 1000), "tokens", stream=stream, **kw)
    r._clock = clock  # the reporter reads time only through its clock
    return r


def test_plain_lines_are_periodic_and_carry_rate_and_time_left():
    out, clock = io.StringIO(), Clock()
    with reporter(out, clock, interval=10.0, terminal=False) as r:
        clock.t += 2
        r.advance(100)  # first line at once: 100 tokens in 2 s
        clock.t += 3
        r.advance(100)  # within the interval: no line
        clock.t += 7
        r.advance(300)  # 10 s after the first line: 500 tokens in 12 s
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert lines[0] == (
        "scoring: 100/1,000 tokens (10%), 50 tokens/s, 0:02 elapsed, about 0:18 left"
    )
    # 500 of 1000 in 12 s: 41.7 tokens/s, 500 left -> 12 s.
    assert lines[1] == (
        "scoring: 500/1,000 tokens (50%), 42 tokens/s, 0:12 elapsed, about 0:12 left"
    )
    assert lines[2] == "scoring: done, 500 tokens in 0:12 (42 tokens/s)"


def test_quiet_writes_nothing_even_on_a_terminal():
    for terminal in (False, True):
        out, clock = io.StringIO(), Clock()
        with reporter(out, clock, quiet=True, terminal=terminal) as r:
            clock.t += 1
            r.advance(10)
            r.say("loaded the model")
        assert out.getvalue() == ""


def test_terminal_bar_shows_count_rate_and_messages():
    out, clock = io.StringIO(), Clock()
    with reporter(out, clock, terminal=True) as r:
        r.say("resuming run 3")
        clock.t += 4
        r.advance(400)
    text = out.getvalue()
    assert "\x1b[" in text  # a live (ANSI) bar, not plain lines
    assert "resuming run 3" in text
    assert "400/1,000 tokens" in text and "100 tokens/s" in text
    assert "about 0:06 left" in text


def test_unknown_and_growing_totals():
    out, clock = io.StringIO(), Clock()
    with reporter(out, clock, total=None, terminal=False, interval=0) as r:
        clock.t += 1
        r.advance(5)
        r.set_total(20)
        clock.t += 1
        r.advance(5)
    first, second, _ = out.getvalue().splitlines()
    assert first == "scoring: 5 tokens, 5 tokens/s, 0:01 elapsed"  # no total: no time left
    assert second.endswith("(50%), 5 tokens/s, 0:02 elapsed, about 0:02 left")


def test_failed_job_gets_no_done_line():
    out, clock = io.StringIO(), Clock()
    try:
        with reporter(out, clock, terminal=False, interval=1e9) as r:
            clock.t += 1
            r.advance(1)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert "done" not in out.getvalue()


def test_advance_from_many_threads_counts_everything():
    out = io.StringIO()
    with progress("rows", 8000, "rows", stream=out, terminal=False, interval=1e9) as r:
        threads = [
            threading.Thread(target=lambda: [r.advance(1) for _ in range(1000)]) for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert r.done == 8000
    assert re.search(r"rows: done, 8,000 rows in", out.getvalue())


def test_formats():
    assert format_duration(7) == "0:07"
    assert format_duration(261) == "4:21"
    assert format_duration(3723) == "1:02:03"
    assert format_count(12345) == "12,345"
    assert format_count(2.5) == "2.5"


def test_a_reporter_started_late_counts_from_its_start_and_one_never_started_says_nothing():
    out, clock = io.StringIO(), Clock()
    r = reporter(out, clock, terminal=False, interval=0)
    r.close()  # never started (a run already complete): no "done" line
    assert out.getvalue() == ""
    out, clock = io.StringIO(), Clock()
    r = reporter(out, clock, terminal=False, interval=0)
    clock.t += 50  # workers starting, models loading: not scoring time
    r.start(since=clock.t - 2)
    r.advance(200)
    r.close()
    assert out.getvalue().splitlines()[-1] == "scoring: done, 200 tokens in 0:02 (100 tokens/s)"


def test_a_detail_follows_the_count_in_lines_the_final_line_and_the_bar():
    out, clock = io.StringIO(), Clock()
    with reporter(out, clock, total=400, terminal=False, interval=0) as r:
        r.set_detail("per chain 50, 70 of 200")
        clock.t += 2
        r.advance(120)
    first, last = out.getvalue().splitlines()
    assert first == (
        "scoring: 120/400 tokens (30%) [per chain 50, 70 of 200], 60 tokens/s, "
        "0:02 elapsed, about 0:05 left"
    )
    assert last == "scoring: done, 120 tokens [per chain 50, 70 of 200] in 0:02 (60 tokens/s)"
    out = io.StringIO()
    with reporter(out, clock, terminal=True) as r:
        r.set_detail("per chain 3, 4 of 10")
        r.advance(7)
    assert "per chain 3, 4 of 10" in out.getvalue()
