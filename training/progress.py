"""What a running training shows: a progress bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger("remi.train")


class ProgressLines:
    """Progress as plain lines on stderr every ``every`` seconds (0 = never), and as log records.

    The stand-in for the progress bar when stderr is not a terminal: step, mean loss since the
    last line, the last valid recall@50 and steps/s, so a redirected log shows a run is alive.
    """

    def __init__(self, total: int, every: float):
        self.total, self.every = total, every
        self.started = self.last = time.monotonic()
        self.last_step = 0
        self.valid_recall: tuple[int, float] | None = None

    def step(self, step: int, loss: float) -> None:
        now = time.monotonic()
        if not self.every or now - self.last < self.every:
            return
        rate = (step - self.last_step) / (now - self.last)
        self.last, self.last_step = now, step
        recall = f"{self.valid_recall[1]:.4f} (step {self.valid_recall[0]})" if self.valid_recall else "n/a"
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        print(
            f"train step {step}/{self.total}  loss {loss:.4f}  valid recall@50 {recall}  {rate:.1f} steps/s"
            f"  elapsed {now - self.started:.0f} s  eta {eta:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        log.info(
            "train progress",
            extra={
                "step": step,
                "max_steps": self.total,
                "loss": round(loss, 6),
                "valid_recall@50": self.valid_recall[1] if self.valid_recall else None,
                "steps_per_second": round(rate, 2),
                "elapsed_seconds": round(now - self.started, 1),
            },
        )


class Progress:
    """The bar when ``show_bar`` (a terminal), else :class:`ProgressLines` every ``line_seconds``.

    Only rank 0 shows anything; without a bar a long run in a job's log would print nothing for hours.
    """

    def __init__(self, total: int, desc: str, lead: bool, show_progress: bool | None, line_seconds: float):
        show_bar = lead and (sys.stderr.isatty() if show_progress is None else show_progress)
        self.bar = tqdm(total=total, desc=desc, unit="step", disable=not show_bar, mininterval=1.0)
        self.lines = ProgressLines(total, line_seconds if lead and not show_bar else 0.0)

    def step(self, step: int, mean_loss: float) -> None:
        self.bar.update(1)
        self.lines.step(step, mean_loss)

    def evaluated(self, step: int, recall: float, best_recall: float) -> None:
        """Shows a valid recall@50 and the best one so far (including this one)."""
        self.bar.set_postfix(r50=f"{recall:.4f}", best=f"{max(best_recall, recall, 0):.4f}")
        self.lines.valid_recall = (step, recall)

    def close(self) -> None:
        self.bar.close()
