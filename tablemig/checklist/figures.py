"""The backfill's figures, computed once: the rate and the batch size that would reach the
target batch time. The report's tiles, its text and its notes, and the NOTES step of a plan,
all show these same numbers (no two computations of one rate can disagree)."""

from __future__ import annotations

import statistics
from typing import Any

from .wording import num as _num

TARGET_BATCH_SECONDS = 0.5  # the backfill tunes its batches towards this batch time


def _two_digits(x: float) -> int:
    """`x` rounded to two significant digits (a batch size is a rough setting)."""
    if x < 10:
        return max(int(round(x)), 1)
    return int(round(x, -(len(str(int(x))) - 2)))


def backfill_figures(facts: dict[str, Any], configured_batch: Any = None) -> dict[str, Any] | None:
    """The backfill of one table in figures, from its facts (`rows_copied`, `timings`,
    `throughput` samples):

    * `rows_per_second`: the rows copied over the backfill phase's time (its batches' rows over
      their time when the phase was not timed), a whole number;
    * `batches`, `median_batch_seconds`: the batches measured;
    * `batch_size`: the configured one (else the median of the samples);
    * `suggested_batch_size`: the rows `rows_per_second` copies in the 0.5 s target, two
      significant digits; `far`: the median batch took less than half or more than twice it.

    None when nothing was copied or measured."""
    samples = [s for s in facts.get("throughput") or [] if isinstance(s, dict)]
    batches = [(b, secs) for s in samples
               if (b := _num(s.get("batch_rows"))) and b > 0 and (secs := _num(s.get("batch_seconds"))) and secs > 0]
    timings: dict[str, Any] = facts["timings"] if isinstance(facts.get("timings"), dict) else {}
    copied, seconds = _num(facts.get("rows_copied")), _num(timings.get("backfill"))
    if copied and seconds:
        rate, basis = copied / seconds, "rows copied over the backfill's time"
    elif batches:
        rate, basis = sum(b for b, _ in batches) / sum(s for _, s in batches), "the batches' rows over their time"
    else:
        return None
    median_s = statistics.median(s for _, s in batches) if batches else None
    sizes = [v for s in samples if (v := _num(s.get("batch_size")))]
    size = _num(configured_batch) or (statistics.median(sizes) if sizes else None)
    return {"rows_per_second": int(round(rate)), "basis": basis, "batches": len(batches),
            "median_batch_seconds": median_s, "batch_size": int(size) if size else None,
            "suggested_batch_size": _two_digits(rate * TARGET_BATCH_SECONDS),
            "far": median_s is not None and not TARGET_BATCH_SECONDS / 2 <= median_s <= TARGET_BATCH_SECONDS * 2}


def rate_text(fig: dict[str, Any]) -> str:
    return f"{fig['rows_per_second']:,} rows/s"


def batch_text(fig: dict[str, Any]) -> str:
    """The batches in one sentence (without a final period)."""
    if not fig["batches"]:
        return f"backfill rate {rate_text(fig)}"
    return (f"{fig['batches']} batch{'' if fig['batches'] == 1 else 'es'} measured, median batch time "
            f"{fig['median_batch_seconds']:.3f} s; backfill rate {rate_text(fig)}")


def recommendation(fig: dict[str, Any]) -> str | None:
    """The batch size to configure, when the batches were far from the target time."""
    if not fig["far"]:
        return None
    configured = f" (configured: {fig['batch_size']:,})" if fig["batch_size"] else ""
    return (f"the median batch took {fig['median_batch_seconds']:.3f} s, far from the {TARGET_BATCH_SECONDS} s "
            f"target; a batch_size of about {fig['suggested_batch_size']:,} rows{configured} would reach it at "
            f"the backfill rate of {rate_text(fig)}")
