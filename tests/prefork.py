"""A pre-forking launcher: run repo scripts as fresh processes without paying the imports again.

Every trainer test runs `python train_gpt2.py ...` in a child process (own pid, argv, cwd,
environment, exit code, stdout/stderr, signals), and ~5 CPU seconds of each launch are the
interpreter start, `import torch`, `torch._dynamo` and matplotlib. This module is that process's
body, started once per test process: it imports them and the repo's modules, then reads one JSON
request per line from stdin and answers each by fork(): the child is a new process that runs the
script as __main__ (runpy), exactly as `python script args` would after the same imports. The
server writes `{"pids": [...]}` when the children start and `{"pids": [...], "rc": ...}` when
they have ended.

With "nproc": N in the request, N children are forked with the environment torchrun gives its
workers on one node (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
GROUP_RANK, TORCHELASTIC_RESTART_COUNT=0) and the exit code is torchrun's (0 when every rank
exits 0; otherwise 1, the other ranks killed). Tests of torchrun itself (its agent, restarts,
rendezvous, error report) run the real torchrun.

Request: {"script": path, "argv": [...], "cwd": dir, "env": {...}, "out": path, "err": path}.
The environment is the child's whole environment; what torch reads only at import time is fixed
by this process's own environment (OMP_NUM_THREADS=1, set by the client). Nothing has run a
torch op in this process before fork, so no thread pool is inherited.
"""
import json
import os
import runpy
import signal
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child(req):
    """Runs in the forked child: become `python <script> <argv>` and exit with its code."""
    code = 1
    try:
        os.setpgid(0, 0)                      # own process group, like a fresh subprocess
        fd_out = os.open(req["out"], os.O_WRONLY | os.O_APPEND)
        fd_err = os.open(req["err"], os.O_WRONLY | os.O_APPEND)
        fd_in = os.open(os.devnull, os.O_RDONLY)
        os.dup2(fd_in, 0)
        os.dup2(fd_out, 1)
        os.dup2(fd_err, 2)
        for fd in (fd_in, fd_out, fd_err):
            os.close(fd)
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        script = os.path.abspath(req["script"])
        sys.argv = [script] + list(req["argv"])
        sys.path[0] = os.path.dirname(script)
        for p in reversed([p for p in req["env"].get("PYTHONPATH", "").split(os.pathsep) if p]):
            sys.path.insert(0, p)
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main():
    sys.path.insert(0, ROOT)
    import numpy  # noqa: F401  (the imports every script pays; nothing is run)
    import torch  # noqa: F401
    import torch.distributed  # noqa: F401
    import torch.nn.functional  # noqa: F401
    import model  # noqa: F401
    import train_gpt2  # noqa: F401  (its module-level code defines constants only)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import torch._dynamo  # noqa: F401  (torch.optim imports it on the first optimizer: ~3 s)
    import plot  # noqa: F401
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        for path in (req["out"], req["err"]):
            open(path, "w").close()
        nproc = req.get("nproc")
        envs = [req["env"]] if not nproc else [
            dict(req["env"], RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(nproc),
                 LOCAL_WORLD_SIZE=str(nproc), GROUP_RANK="0", MASTER_ADDR="127.0.0.1",
                 MASTER_PORT=str(req["port"]), TORCHELASTIC_RESTART_COUNT="0")
            for r in range(nproc)]
        pids = []
        for env in envs:
            pid = os.fork()
            if pid == 0:
                _child(dict(req, env=env))
            pids.append(pid)
        print(json.dumps({"pids": pids}), flush=True)
        codes = {}
        while len(codes) < len(pids):
            pid, status = os.wait()
            codes[pid] = os.waitstatus_to_exitcode(status)
            if codes[pid] != 0 and nproc:       # torchrun: one rank failed -> stop the others
                for other in pids:
                    if other not in codes:
                        os.kill(other, signal.SIGKILL)
        rc = codes[pids[0]] if not nproc else int(any(codes.values()))
        print(json.dumps({"pids": pids, "rc": rc}), flush=True)


class Launcher:
    """Client side: one prefork server per test process, started on first use.

    run(script, argv, cwd, env, timeout) -> subprocess.CompletedProcess (text stdout/stderr),
    raising subprocess.TimeoutExpired after killing the child's process group, like
    subprocess.run(..., capture_output=True, text=True, timeout=timeout).
    """

    def __init__(self):
        self.proc = None
        self.tmp = None

    def _start(self):
        import subprocess
        import tempfile
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.tmp = tempfile.mkdtemp(prefix="prefork-")
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)], cwd=ROOT,
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        assert "ready" in json.loads(self.proc.stdout.readline())

    def _reply(self, timeout):
        import select
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("prefork server died")
        return json.loads(line)

    def _send(self, script, argv, cwd, env, nproc=None):
        """Start a launch -> (pids, out path, err path)."""
        import socket
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        out, err = os.path.join(self.tmp, "out"), os.path.join(self.tmp, "err")
        req = {"script": script, "argv": [str(a) for a in argv], "cwd": str(cwd), "env": env,
               "out": out, "err": err}
        if nproc:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                req.update(nproc=nproc, port=sock.getsockname()[1])
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._reply(60)["pids"], out, err

    def popen(self, script, argv, cwd, env, nproc=None):
        """A running `python script *argv` -> Process (pid, poll, communicate, returncode). Until
        it ends, this launcher starts nothing else."""
        return Process(self, *self._send(script, argv, cwd, env, nproc))

    def run(self, script, argv, cwd, env, timeout, nproc=None):
        import subprocess
        proc = self.popen(script, argv, cwd, env, nproc)
        cmd = [sys.executable, script] + [str(a) for a in argv]
        try:
            stdout, stderr = proc.communicate(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate(60)
            raise subprocess.TimeoutExpired(cmd, timeout, output=stdout, stderr=stderr) from None
        return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


class Process:
    """The subprocess.Popen subset the tests use, for the children (ranks) of one launch of
    the prefork server; pid is the first (rank 0)."""

    def __init__(self, launcher, pids, out, err):
        self.launcher, self.pids, self.out, self.err = launcher, pids, out, err
        self.pid, self.returncode = pids[0], None

    def send_signal(self, sig):
        os.kill(self.pid, sig)

    def kill(self):
        """SIGKILL every child's process group."""
        for pid in self.pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def poll(self):
        if self.returncode is None:
            done = self.launcher._reply(0)
            if done is not None:
                self.returncode = done["rc"]
        return self.returncode

    def communicate(self, timeout=None):
        import subprocess
        if self.returncode is None:
            done = self.launcher._reply(timeout)
            if done is None:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            self.returncode = done["rc"]
        with open(self.out, errors="replace") as f_out, open(self.err, errors="replace") as f_err:
            return f_out.read(), f_err.read()


if __name__ == "__main__":
    main()
