import io

from heldout.run.execute import ProgressPrinter


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    bar = ProgressPrinter(10, out, every_seconds=3600)
    for step in (0, 5, 10):
        bar.log(step, {"test/accuracy": step / 10})
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the first and the last step; the middle one is rate-limited
    assert lines[0].startswith("step 0/10") and "test/accuracy 1" in lines[1]
    assert "\r" not in out.getvalue()


def test_live_bar_on_a_terminal():
    out = FakeTTY()
    bar = ProgressPrinter(4, out)
    bar.log(2, {"train/accuracy": 0.5})
    bar.log(4, {"train/accuracy": 1.0})
    text = out.getvalue()
    assert text.count("\r") == 2 and "[############------------] 2/4" in text
    assert text.endswith("\n") and "train/accuracy 1" in text
