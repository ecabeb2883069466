"""pymilter's TestCtx, keeping every header and body action with its arguments."""

from __future__ import annotations

from Milter import testctx


class RecordingCtx(testctx.TestCtx):
    def __init__(self) -> None:
        super().__init__()
        self.actions: list[tuple[str, str, object]] = []

    def chgheader(self, field: str, idx: int, value: str) -> None:
        self.actions.append(("chg", field, idx))
        super().chgheader(field, idx, value)

    def addheader(self, field: str, value: str, idx: int = -1) -> None:
        self.actions.append(("add", field, value))
        super().addheader(field, value, idx)

    def replacebody(self, chunk: bytes) -> None:
        self.actions.append(("body", "", chunk))
        super().replacebody(chunk)
