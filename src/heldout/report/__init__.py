"""Reports."""
from heldout.report.html import first_step_reaching, run_label, write_report

__all__ = ["first_step_reaching", "run_label", "write_report"]
