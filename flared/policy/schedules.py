"""When cron jobs run: schedules from hermes-flare.yaml as plain functions of time.

``every 90m`` schedules count from the last run; cron expressions are
evaluated in the job's timezone. Pure, so every schedule is a unit test.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from flared.config.models import CronJob
from flared.config.units import parse_duration


def is_agent(job: CronJob) -> bool:
    return job.prompt is not None


def every_seconds(schedule: str) -> float | None:
    text = schedule.strip()
    if text.lower().startswith("every"):
        return parse_duration(text[5:].strip())
    return None


def next_run(job: CronJob, after: float, last_run: float | None = None) -> float:
    """The first scheduled time strictly after ``after`` (epoch seconds).

    ``every`` schedules count from the last run (or from ``after`` when the
    job never ran); cron expressions are evaluated in the job's timezone, so
    ``0 9 * * *`` means 09:00 there, across DST changes.
    """
    interval = every_seconds(job.schedule)
    if interval is not None:
        base = last_run if last_run is not None else after
        nxt = base + interval
        while nxt <= after:
            nxt += interval
        return nxt
    from croniter import croniter  # with dateutil and pytz: loaded only for cron expressions

    start = datetime.fromtimestamp(after, ZoneInfo(job.timezone))
    return float(croniter(job.schedule, start).get_next(float))


def spec_digest(job: CronJob) -> str:
    """Changes when a job's schedule changes: its next run is recomputed then."""
    text = json.dumps([job.schedule, job.timezone, job.enabled], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def hermes_schedule(job: CronJob) -> str:
    """A schedule Hermes' own parser accepts: cron expressions as is, `every` in whole minutes."""
    interval = every_seconds(job.schedule)
    if interval is None:
        return " ".join(job.schedule.split())
    if interval < 60 or interval % 60:
        raise ValueError(
            f"agent job {job.name!r}: Hermes runs agent jobs at minute granularity; "
            f"use a whole number of minutes (e.g. 'every 5m'), not {job.schedule!r}"
        )
    return f"every {int(interval // 60)}m"


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None


def timezone_note(job: CronJob, hermes_tz: str | None, now: float) -> str | None:
    """Hermes runs a bot's cron expressions in the bot's timezone; say so when it differs."""
    if every_seconds(job.schedule) is not None:
        return None
    when = datetime.fromtimestamp(now, UTC)
    want = when.astimezone(ZoneInfo(job.timezone)).utcoffset()
    have = when.astimezone(ZoneInfo(hermes_tz)).utcoffset() if hermes_tz else when.astimezone().utcoffset()
    if want == have:
        return None
    return (
        f"Hermes runs this bot's cron expressions in {hermes_tz or 'the server timezone'}, not "
        f"{job.timezone}; set `timezone: {job.timezone}` under the bot's `hermes:` section"
    )
