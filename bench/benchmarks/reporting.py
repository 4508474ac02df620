"""How the benchmark scripts report: markdown tables, and which targets held on a run.

The scripts only report; none fails on a target. No asv benchmark is defined here (asv
imports every module of this folder)."""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

Subject = TypeVar("Subject")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table of ``header`` and ``rows`` of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def verdict(description: str, holds: bool, figures: str) -> str:
    """One report line: whether a target held, and the figures that decide it."""
    return f"- {description}: {'HOLDS' if holds else 'MISSED'} ({figures})"


@dataclass(frozen=True)
class Target(Generic[Subject]):
    """A goal, checked on what a run measured: a row of a table, or all of a run's rows.

    ``check`` says whether it holds on a subject, and the figures that decide it; ``unmeasured``
    says why it cannot be checked on a subject (what it lacks, or that the goal is not about it),
    None where it can.
    """

    description: str
    check: Callable[[Subject], tuple[bool, str]]
    unmeasured: Callable[[Subject], str | None] = lambda subject: None

    def on(self, subject: Subject) -> str:
        """The report line of this target on one subject."""
        reason = self.unmeasured(subject)
        if reason is not None:
            return f"- {self.description}: not measured ({reason})"
        return verdict(self.description, *self.check(subject))

    def over(self, rows: Sequence[Subject], label: Callable[[Subject], str]) -> str:
        """The report line of this target on every row it can be checked on: all of them where
        it held everywhere, else those where it missed; each named by ``label``."""
        checked = [row for row in rows if self.unmeasured(row) is None]
        if not checked:
            return f"- {self.description}: no row measured"
        outcomes = [(row, *self.check(row)) for row in checked]
        missed = [f"{label(row)} ({figures})" for row, holds, figures in outcomes if not holds]
        if missed:
            return f"- {self.description}: MISSED on {len(missed)} of {len(checked)} rows: " + "; ".join(missed)
        held = [f"{label(row)} ({figures})" for row, _, figures in outcomes]
        return f"- {self.description}: HOLDS on all {len(checked)} rows: " + "; ".join(held)


def target_report(
    targets: Iterable[Target[Subject]], subjects: Sequence[Subject], label: Callable[[Subject], str] | None = None
) -> str:
    """One line per target. With ``label``, each target is checked on every subject (a table's
    rows) it applies to; without, ``subjects`` is one subject (a whole run)."""
    if label is None:
        (subject,) = subjects
        return "\n".join(target.on(subject) for target in targets)
    return "\n".join(target.over(subjects, label) for target in targets)
