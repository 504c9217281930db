"""One process per run: an exclusive flock on log/{run_name}.lock while the run writes.

    lock = runlock.acquire(log_dir, run_name)     # RunLocked when another live process holds it
    lock = runlock.acquire_on_master(dist, log_dir, run_name)   # rank 0 takes it, all ranks agree
    ...
    lock.release()                                # also implicit when the process dies

The kernel drops an flock when its holder exits, however it exits (kill -9 included), so a lock
file left behind by a killed run never blocks the next one. The file holds the holder's pid (for
the error message) and is removed by release().
"""
import fcntl
import os


class RunLocked(Exception):
    """Another live process holds the run: one-line message naming its pid."""


class RunLock:
    def __init__(self, path, fd):
        self.path, self.fd = path, fd

    def release(self):
        if self.fd is None:
            return
        try:
            os.remove(self.path)      # before unlocking: a waiter then sees a fresh inode
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def lock_path(log_dir, run_name):
    return os.path.join(log_dir, f"{run_name}.lock")


def acquire(log_dir, run_name):
    """Take the run's lock without waiting -> RunLock; RunLocked if a live process has it."""
    path = lock_path(log_dir, run_name)
    os.makedirs(log_dir, exist_ok=True)
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise RunLocked(f"run {run_name!r} in {log_dir} is in use by process "
                            f"{holder or '(unknown)'} (lock {path}); wait for it to end or "
                            f"choose another run_name") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:                  # the holder released (and removed) it meanwhile: retry
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return RunLock(path, fd)
    raise RunLocked(f"run {run_name!r} in {log_dir}: could not take the lock {path}")


def acquire_on_master(d, log_dir, run_name):
    """acquire() on rank 0 of d (distributed.DistContext) -> its RunLock, None on the other
    ranks; RunLocked on every rank when another live process holds the run."""
    lock, err = None, None
    if d.master:
        try:
            lock = acquire(log_dir, run_name)
        except RunLocked as e:
            err = e
    if not d.all_ok(err is None):
        raise RunLocked(str(err) if err else "the run is in use (lock held; see rank 0)")
    return lock


def _read_pid(fd):
    try:
        return os.pread(fd, 32, 0).decode().strip() or None
    except (OSError, UnicodeDecodeError):
        return None
