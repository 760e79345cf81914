"""Errors raised by the data contracts.

``data_contracts`` may not import ``sentio``; callers in ``sentio`` translate
:class:`ContractViolation` into their own error hierarchy (``ContractError``) where a
user-facing message is needed. ``str(violation)`` is already a single line that names
the source, the contract and every failed check.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ContractViolation"]


class ContractViolation(Exception):
    """A frame violates a data contract.

    Attributes:
        source: where the frame came from (a file name, a stage name), used as the
            prefix of the message.
        contract: the human-readable name of the contract, e.g. ``"canonical bars"``.
        failures: one dict per failed check with the keys ``check`` (a stable check
            name such as ``"ohlc_consistent"`` or ``"column_dtype"``), ``column`` (the
            column, or ``None`` for frame-level checks), ``failing_rows`` (the number of
            failing rows, or ``None`` for structural checks), ``examples`` (a few
            ``{"row": index, "value": value}`` dicts, rows counted from 0) and
            ``message`` (a one-line description of this failure).
    """

    def __init__(self, source: str, contract: str, failures: list[dict[str, Any]]) -> None:
        self.source = source
        self.contract = contract
        self.failures = failures
        super().__init__(self._format())

    def _format(self) -> str:
        parts = ", ".join(str(f["message"]) for f in self.failures) or "no details"
        line = f"{self.source}: contract '{self.contract}' violated: {parts}"
        return " ".join(line.split())

    @property
    def checks(self) -> list[str]:
        """The names of the failed checks, in report order (may repeat per column)."""
        return [str(f["check"]) for f in self.failures]

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.source, self.contract, self.failures))
