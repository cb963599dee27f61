"""The job controller (plain asyncio, no Qt) and the normalized job model."""

from app.backends.base import ErrorKind, JobError, JobState
from app.jobs.controller import Job, JobController, JobEvent

__all__ = ["ErrorKind", "Job", "JobController", "JobError", "JobEvent", "JobState"]
