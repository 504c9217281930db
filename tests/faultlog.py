"""Tally of the faults tests/test_faults.py injects and survives (printed by conftest's
pytest_terminal_summary as one line; under `-n 2` each worker hands its tally to the controller)."""
INJECTED = []
SURVIVED = []


def inject(name):
    """Call when the fault has been injected (before checking recovery)."""
    INJECTED.append(name)


def survived(name):
    """Call at the end of a test, after every recovery assertion has passed."""
    SURVIVED.append(name)


def state():
    return {"injected": list(INJECTED), "survived": list(SURVIVED)}


def merge(other):
    """Add a worker's state() to this process's tally."""
    INJECTED.extend(other["injected"])
    SURVIVED.extend(other["survived"])


def summary():
    if not INJECTED:
        return None
    lost = [n for n in INJECTED if n not in SURVIVED]
    line = f"fault injection: {len(INJECTED)} faults injected, {len(SURVIVED)} survived"
    return line + (f"; NOT survived: {', '.join(lost)}" if lost else "")
