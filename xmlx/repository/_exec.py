"""Run a conditional UPDATE and say how many rows it changed (the compare-and-set answer)."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, Executable
from sqlalchemy.orm import Session


def execute_count(session: Session, statement: Executable) -> int:
    # ORM objects already loaded are refreshed by the callers that need them, so the
    # session does not need to evaluate the WHERE clause in Python.
    result = session.execute(statement, execution_options={"synchronize_session": False})
    return cast(CursorResult[Any], result).rowcount
