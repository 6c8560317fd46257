"""Studies: cells times seeds, run on one engine session, cached by config hash, reported with
paired statistics (``fedsim study NAME``; declarations in ``conf/study/``)."""

from fedsim.study.report import STUDY_REPORTS, run_and_report, write_report
from fedsim.study.runner import PlannedRun, plan, run_study, study_dir
from fedsim.study.spec import StudySpec, load_study, parse_study

__all__ = [
    "STUDY_REPORTS",
    "PlannedRun",
    "StudySpec",
    "load_study",
    "parse_study",
    "plan",
    "run_and_report",
    "run_study",
    "study_dir",
    "write_report",
]
