"""The job layer: what to run, planned before anything runs.

`manifest` reads JSONL/CSV manifests (per-line errors); `plan` turns a `Request` (files,
folders, globs, a manifest or one text) into a `Plan` of `Job`s and `Rejected` items: output
names, seeds, cross-job checks and the existing-output policy. Planning reads no audio and loads
no model. This package's public names are re-exported here.
"""

from metis_cli.core.tasks import Job
from metis_cli.jobs.manifest import JOB_FIELDS, TEXT_FIELDS, ManifestRow, parse_row, read_manifest
from metis_cli.jobs.plan import (
    AUDIO_EXTENSIONS,
    OUTPUT_SUFFIX,
    VIDEO_EXTENSIONS,
    Plan,
    Rejected,
    Request,
    check_conflicts,
    check_text,
    default_output,
    expand_inputs,
    is_folder_target,
    is_stdout,
    looks_like_output,
    make_job,
    output_problem,
    plan,
    plan_jobs,
    random_seed,
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "JOB_FIELDS",
    "OUTPUT_SUFFIX",
    "TEXT_FIELDS",
    "VIDEO_EXTENSIONS",
    "Job",
    "ManifestRow",
    "Plan",
    "Rejected",
    "Request",
    "check_conflicts",
    "check_text",
    "default_output",
    "expand_inputs",
    "is_folder_target",
    "is_stdout",
    "looks_like_output",
    "make_job",
    "output_problem",
    "parse_row",
    "plan",
    "plan_jobs",
    "random_seed",
    "read_manifest",
]
