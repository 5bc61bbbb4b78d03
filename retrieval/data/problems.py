"""Bad-data policy in one place: raise the first problem as a `UserError`, or skip it and count it."""

from __future__ import annotations

import logging
from collections import Counter

from retrieval.errors import UserError

logger = logging.getLogger(__name__)

# Problems that drop a whole image, in the order the summary line lists them.
IMAGE_PROBLEMS = ("missing", "unreadable", "unknown split", "malformed", "no captions")
# Problems that drop one caption but keep its image.
CAPTION_PROBLEMS = ("empty captions",)
MAX_EXAMPLES = 20


class Problems:
    """Collects data problems for one load: strict (`skip=False`) raises, lenient counts and moves on."""

    def __init__(self, skip: bool) -> None:
        self.skip = skip
        self.counts: Counter[str] = Counter()
        self.seen = 0  # image entries examined, for "skipped X of Y images"
        self.examples: list[str] = []  # the first few messages, for `retrieval data check`

    def report(self, kind: str, message: str) -> None:
        """One bad item: `kind` is one of IMAGE_PROBLEMS/CAPTION_PROBLEMS, `message` names file and entry."""
        if kind not in IMAGE_PROBLEMS + CAPTION_PROBLEMS:
            raise ValueError(f"unknown problem kind {kind!r}")
        if not self.skip:
            raise UserError(f"{message} (set data.skip_bad / --skip-bad to skip such entries)")
        self.counts[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(message)
        logger.debug("skipped: %s", message)

    @property
    def skipped_images(self) -> int:
        """How many image entries were dropped."""
        return sum(self.counts[k] for k in IMAGE_PROBLEMS)

    def summary(self) -> str:
        """One line, e.g. "skipped 3 of 1000 images: 2 missing, 1 unreadable; 4 empty captions"."""
        parts = [f"{self.counts[k]} {k}" for k in IMAGE_PROBLEMS if self.counts[k]]
        line = f"skipped {self.skipped_images} of {self.seen} images"
        if parts:
            line += ": " + ", ".join(parts)
        captions = [f"{self.counts[k]} {k}" for k in CAPTION_PROBLEMS if self.counts[k]]
        if captions:
            line += "; " + ", ".join(captions)
        return line

    def log_summary(self, what: str) -> None:
        """Log the summary once, only when something was skipped."""
        if sum(self.counts.values()):
            logger.warning("%s: %s", what, self.summary())
