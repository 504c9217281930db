"""Tally of the faults tests/test_faults.py injects and survives (printed by conftest's
pytest_terminal_summary as one line)."""
INJECTED = []
SURVIVED = []


def inject(name):
    """Call when the fault has been injected (before checking recovery)."""
    INJECTED.append(name)


def survived(name):
    """Call at the end of a test, after every recovery assertion has passed."""
    SURVIVED.append(name)


def summary():
    if not INJECTED:
        return None
    lost = [n for n in INJECTED if n not in SURVIVED]
    line = f"fault injection: {len(INJECTED)} faults injected, {len(SURVIVED)} survived"
    return line + (f"; NOT survived: {', '.join(lost)}" if lost else "")
