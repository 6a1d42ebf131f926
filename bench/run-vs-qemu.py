#!/usr/bin/env python3
"""Benchmark: `dutlab run examples/qemu-smoke.yaml` against bare QEMU doing the same work.

A = dutlab on the smoke job. B = this script alone driving QEMU: the same qcow2 linked clone
of rootfs.qcow2, the same QEMU argument vector (`command_line` in crates/qemu/src/vm.rs,
checked against dutlab's live QEMU), console connected before QMP `cont`, wait for `login:`,
log in as root, wait for `# `, run the job's four run steps as plain shell (no lava-test-case
wrapper), wait for the prompt, check the results, QMP `quit`. Every wait is a wait for console
output, never a sleep. Rounds alternate A B A B ... after one discarded warm-up pair; before
every run the host is sampled for an idle second (same starting state for both sides).

Printed: median wall times and ratio, the overhead with the (noisy) guest boot taken out,
dutlab's own CPU time and peak RSS (the dutlab process only, not QEMU), time to first console
byte of both (dutlab: its start to the first byte on its stdout; bare: QEMU's start to the
first byte on the serial socket) and a per-phase breakdown from timestamps of dutlab's output.
`--probe` instead times single console commands in one bare boot, to explain the breakdown.

dutlab's CPU time and peak RSS are read exactly at exit without changing the binary: the
script ptraces every dutlab thread (PTRACE_O_TRACECLONE|PTRACE_O_TRACEEXIT via ctypes; child
processes are not traced), adds up each thread's schedstat runtime at its exit stop (ns,
user+sys) and reads VmHWM at the main thread's exit stop, when the memory map still exists;
utime+stime (10 ms ticks) comes from /proc/<pid>/stat of the zombie (waitid WNOWAIT).
`--no-ptrace` samples VmHWM every --sample-ms instead.

Every QEMU is killed at the end whatever happens: bare ones by process group in `finally`,
dutlab's because dutlab runs with TMPDIR in this script's private directory and every process
whose command line names that directory is killed.

Usage: bench/run-vs-qemu.sh [--rounds N] [--json FILE]   (builds the release binary first)
       python3 bench/run-vs-qemu.py --dutlab target/release/dutlab [--rounds N] [--probe]
Results: docs/benchmarks.md.
"""

import argparse
import ctypes
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# QemuConfig::default() in crates/qemu/src/vm.rs.
QEMU_BINARY = "qemu-system-x86_64"
QEMU_ACCEL = "tcg"
QEMU_MACHINE = "pc"
QEMU_MEMORY_MIB = 512
QEMU_CPUS = 1
QEMU_KERNEL_ARGS = "console=ttyS0 panic=-1 quiet"

# ptrace(2) constants (x86_64 and generic Linux).
PTRACE_CONT = 7
PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_O_TRACECLONE = 0x08
PTRACE_O_TRACEEXIT = 0x40
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_STOP = 128
WALL = 0x40000000  # __WALL: wait for threads too


class BenchError(Exception):
    pass


def now():
    return time.monotonic()


# ---------------------------------------------------------------------------------------------
# The bare side


def free_loopback_port():
    """A port on 127.0.0.1 that was free a moment ago, as the QEMU rig picks its SSH forward."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qemu_args(kernel, initrd, overlay, run_dir, ssh_port=None):
    """The argument vector of `command_line` in crates/qemu/src/vm.rs, default QemuConfig
    (user-mode NIC with the guest's SSH port forwarded from 127.0.0.1)."""
    if ssh_port is None:
        ssh_port = free_loopback_port()
    return [
        "-name", "dutlab-dut",
        "-accel", QEMU_ACCEL,
        "-machine", QEMU_MACHINE,
        "-m", str(QEMU_MEMORY_MIB),
        "-smp", str(QEMU_CPUS),
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-no-reboot",
        "-S",
        "-chardev",
        "socket,id=console,path=%s,server=on,wait=off" % os.path.join(run_dir, "console.sock"),
        "-serial", "chardev:console",
        "-qmp", "unix:%s,server=on,wait=off" % os.path.join(run_dir, "qmp.sock"),
        "-netdev", "user,id=dutlab-net0,restrict=on,hostfwd=tcp:127.0.0.1:%d-:22" % ssh_port,
        "-device", "virtio-net-pci,netdev=dutlab-net0",
        "-kernel", kernel,
        "-append", QEMU_KERNEL_ARGS,
        "-initrd", initrd,
        "-drive", "file=%s,format=qcow2,if=virtio" % overlay,
    ]


def smoke_commands(job_path):
    """Turns the job's `lava-test-case` run steps into one plain shell line.

    `NAME --shell CMD` becomes `CMD; echo "BENCH_TC NAME rc=$?"`; `NAME --result ...`
    becomes a printf of NAME and the (DUT-expanded) rest of the arguments, so command
    substitutions such as the MemTotal measurement still run in the DUT. Returns the line
    and the case names in order. Only the simple form of the smoke job is understood.
    """
    steps = []
    with open(job_path, encoding="utf-8") as f:
        for raw in f:
            m = re.match(r"^\s*-\s+lava-test-case\s+(.*?)\s*$", raw)
            if m:
                steps.append(m.group(1))
    if not steps:
        raise BenchError("%s: no `- lava-test-case` run steps found" % job_path)
    parts, names = [], []
    for step in steps:
        m = re.match(r"^([-_.A-Za-z0-9]+)\s+--shell\s+(.*)$", step)
        if m:
            names.append(m.group(1))
            parts.append('%s; echo "BENCH_TC %s rc=$?"' % (m.group(2), m.group(1)))
            continue
        m = re.match(r"^([-_.A-Za-z0-9]+)\s+(--result\s+.*)$", step)
        if m:
            names.append(m.group(1))
            parts.append("printf 'BENCH_TC %%s' %s; printf ' %%s' %s; echo" % (m.group(1), m.group(2)))
            continue
        raise BenchError("cannot translate run step %r" % step)
    line = "; ".join(parts)
    if len(line) > 1000 or "# " in line:
        raise BenchError("translated command line is unusable: %r" % line)
    return line, names


class Qmp:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _line(self, deadline):
        while b"\n" not in self.buf:
            left = deadline - now()
            if left <= 0:
                raise BenchError("QMP: timeout")
            r, _, _ = select.select([self.sock], [], [], left)
            if r:
                data = self.sock.recv(65536)
                if not data:
                    raise BenchError("QMP: socket closed")
                self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def greeting(self, deadline):
        msg = self._line(deadline)
        if "QMP" not in msg:
            raise BenchError("QMP: no greeting: %r" % msg)

    def execute(self, command, deadline):
        self.sock.sendall(json.dumps({"execute": command}).encode() + b"\r\n")
        while True:
            msg = self._line(deadline)
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise BenchError("QMP %s: %r" % (command, msg["error"]))
            # an asynchronous event: skip


CSI = re.compile(rb"\x1b\[[0-9;?]*[@-~]")
CSI_PREFIX = re.compile(rb"\x1b(\[[0-9;?]*)?$")


class Console:
    """The serial console of the bare QEMU: a byte stream with prompt waits.

    As in dutlab's expect engine, patterns are matched on the stream with terminal escape
    sequences removed (busybox ash asks for the cursor position after each prompt).
    """

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""  # unconsumed bytes, escape sequences removed
        self.partial = b""  # an escape sequence cut by a read
        self.first_byte = None
        self.transcript = bytearray()

    def _feed(self, data):
        data = self.partial + data
        m = CSI_PREFIX.search(data)
        if m:
            data, self.partial = data[:m.start()], data[m.start():]
        else:
            self.partial = b""
        self.buf += CSI.sub(b"", data)

    def expect(self, pattern, deadline, what):
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.buf)
            if m:
                before = self.buf[:m.start()]
                self.buf = self.buf[m.end():]
                return before
            left = deadline - now()
            if left <= 0:
                raise BenchError("bare: no %s before the deadline; last output: %r"
                                 % (what, bytes(self.transcript[-300:])))
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                continue
            data = self.sock.recv(65536)
            if not data:
                raise BenchError("bare: console closed while waiting for %s" % what)
            if self.first_byte is None:
                self.first_byte = now()
            self.transcript += data
            self._feed(data)

    def send(self, line):
        self.sock.sendall(line.encode() + b"\n")


def connect_unix(path, proc, deadline):
    """Connects to a QEMU server socket, retrying every 5 ms as dutlab does."""
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
        if proc.poll() is not None:
            raise BenchError("bare: QEMU exited during start-up: %s" % proc.stderr.read().decode(errors="replace"))
        if now() >= deadline:
            raise BenchError("bare: QEMU did not open %s" % path)
        time.sleep(0.005)


class BareVm:
    """A QEMU started the way dutlab starts it, driven from here."""

    def __init__(self, cfg, name):
        self.cfg = cfg
        self.work = os.path.join(cfg.root, name)
        self.proc = None
        self.sockets = []
        self.console = None
        self.qmp = None
        self.t = {}

    def start(self, deadline):
        """Overlay, QEMU paused, console and QMP connected, guest running."""
        cfg = self.cfg
        run_dir = os.path.join(self.work, "vm-0")
        overlay = os.path.join(self.work, "rootfs.overlay.qcow2")
        self.t["start"] = now()
        os.makedirs(run_dir)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                        cfg.rootfs, overlay], check=True, stdin=subprocess.DEVNULL)
        self.t["spawn"] = now()
        args = qemu_args(cfg.kernel, cfg.initrd, overlay, run_dir)
        self.proc = subprocess.Popen([cfg.qemu] + args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     process_group=0)
        cfg.live_groups.add(self.proc.pid)
        csock = connect_unix(os.path.join(run_dir, "console.sock"), self.proc, deadline)
        self.sockets.append(csock)
        qsock = connect_unix(os.path.join(run_dir, "qmp.sock"), self.proc, deadline)
        self.sockets.append(qsock)
        self.qmp = Qmp(qsock)
        self.qmp.greeting(deadline)
        self.qmp.execute("qmp_capabilities", deadline)
        self.console = Console(csock)
        self.qmp.execute("cont", deadline)
        self.t["cont"] = now()

    def login(self, deadline):
        self.console.expect(rb"login:", deadline, "login prompt")
        self.t["login"] = now()
        self.console.send("root")
        self.console.expect(rb"# $", deadline, "shell prompt")
        self.t["shell"] = now()

    def quit(self, deadline):
        self.qmp.execute("quit", deadline)
        self.proc.wait(timeout=max(1.0, deadline - now()))
        shutil.rmtree(self.work)

    def close(self):
        for s in self.sockets:
            s.close()
        if self.proc is not None:
            kill_group(self.proc.pid)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.cfg.live_groups.discard(self.proc.pid)
            if self.proc.stderr:
                self.proc.stderr.close()


def run_bare(cfg, index):
    """One bare run; returns a dict of figures."""
    deadline = now() + cfg.timeout
    vm = BareVm(cfg, "bare-%d" % index)
    try:
        vm.start(deadline)
        vm.login(deadline)
        vm.console.send(cfg.command_line)
        out = vm.console.expect(rb"# $", deadline, "prompt after the commands")
        t_done = now()
        check_bare_output(out, cfg.case_names)
        vm.quit(deadline)
        t_end = now()
        t, first = vm.t, vm.console.first_byte
        res = {
            "wall_s": t_end - t["start"],
            "ttfb_s": first - t["spawn"],
            "setup_s": t["cont"] - t["start"],
            "setup_qemu_s": t["cont"] - t["spawn"],
            "boot_s": first - t["cont"],
            "phases": {
                "qemu-img create": t["spawn"] - t["start"],
                "spawn QEMU, sockets, QMP cont": t["cont"] - t["spawn"],
                "cont -> first console byte": first - t["cont"],
                "first byte -> login prompt": t["login"] - first,
                "login -> shell prompt": t["shell"] - t["login"],
                "run the 4 commands": t_done - t["shell"],
                "QMP quit -> QEMU exit, cleanup": t_end - t_done,
            },
        }
        if cfg.keep_transcripts:
            res["transcript"] = vm.console.transcript.decode(errors="replace")
        return res
    finally:
        vm.close()


def check_bare_output(out, names):
    text = out.replace(b"\r", b"").decode(errors="replace")
    # Skip the echoed command line (the shell echoes what was typed).
    text = text.split("\n", 1)[1] if "\n" in text else ""
    found = {}
    for m in re.finditer(r"BENCH_TC (\S+) (.*)", text):
        found[m.group(1)] = m.group(2).strip()
    for name in names:
        value = found.get(name)
        ok = value is not None and (value == "rc=0" or value.startswith("--result pass"))
        if not ok:
            raise BenchError("bare: case %s did not pass (%r); output: %r" % (name, value, text))


# ---------------------------------------------------------------------------------------------
# The dutlab side

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


def ptrace(request, pid, data=0):
    r = _libc.ptrace(request, pid, None, ctypes.c_void_p(data))
    if r == -1:
        e = ctypes.get_errno()
        raise OSError(e, "ptrace(%d): %s" % (request, os.strerror(e)))
    return r


def read_status(pid):
    """(VmHWM kB or None, utime+stime ticks or None) of a process, from /proc."""
    hwm = None
    cpu = None
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
        fields = stat[stat.rindex(")") + 2:].split()
        # fields[0] is field 3 (state); utime is field 14, stime field 15.
        cpu = int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        pass
    return hwm, cpu


def thread_runtime_ns(pid, tid):
    """sum_exec_runtime of one thread (ns on a CPU, user+sys), or None."""
    try:
        with open("/proc/%d/task/%d/schedstat" % (pid, tid)) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class Watcher(threading.Thread):
    """Traces, waits for and reaps one dutlab process; records its last figures.

    With ptrace, every thread of dutlab is traced (PTRACE_O_TRACECLONE; child processes are
    not) and stopped once as it exits (PTRACE_O_TRACEEXIT): the thread's on-CPU time is read
    from its schedstat there, and at the main thread's exit stop VmHWM is read too. Other stops
    (signals) are resumed at once, re-injecting the signal.
    """

    def __init__(self, proc, use_ptrace, sample_s):
        super().__init__(daemon=True)
        self.proc = proc
        self.pid = proc.pid
        self.use_ptrace = use_ptrace
        self.sample_s = sample_s
        self.hwm_kb = None
        self.hwm_method = None
        self.cpu_ticks = None
        self.runtime_ns = None
        self.threads = 0
        self.exit_status = None
        self.t_exit = None
        self.error = None
        self.done = threading.Event()

    def run(self):
        try:
            self._run()
        except BaseException as e:  # reported by the main thread
            self.error = e
        finally:
            self.done.set()

    def _seize_all(self, tracked):
        """Seizes the process and any thread it already has."""
        options = PTRACE_O_TRACEEXIT | PTRACE_O_TRACECLONE
        ptrace(PTRACE_SEIZE, self.pid, options)
        tracked.add(self.pid)
        while True:
            try:
                tids = {int(t) for t in os.listdir("/proc/%d/task" % self.pid)}
            except OSError:
                return
            new = tids - tracked
            if not new:
                return
            for tid in new:
                try:
                    ptrace(PTRACE_SEIZE, tid, options)
                except OSError:
                    pass  # gone already
                tracked.add(tid)

    def _run(self):
        traced = False
        tracked = set()
        if self.use_ptrace:
            try:
                self._seize_all(tracked)
                traced = True
            except OSError as e:
                print("bench: ptrace not allowed (%s); sampling VmHWM every %d ms instead"
                      % (e, self.sample_s * 1000), file=sys.stderr)
        if traced:
            runtime = {}
            while True:
                tid, status = os.waitpid(-1, WALL)
                if tid != self.pid and tid not in tracked and not os.path.exists(
                        "/proc/%d/task/%d" % (self.pid, tid)):
                    continue  # not one of dutlab's threads
                if os.WIFSTOPPED(status):
                    tracked.add(tid)
                    sig = os.WSTOPSIG(status)
                    event = status >> 16
                    if sig == signal.SIGTRAP and event == PTRACE_EVENT_EXIT:
                        runtime[tid] = thread_runtime_ns(self.pid, tid)
                        if tid == self.pid:
                            self.hwm_kb, _ = read_status(self.pid)
                            self.hwm_method = "VmHWM at the ptrace exit stop (exact)"
                            # Threads still alive are being killed by exit_group: read them now.
                            for other in tracked - {self.pid}:
                                if other not in runtime:
                                    runtime[other] = thread_runtime_ns(self.pid, other)
                            ptrace(PTRACE_DETACH, tid, 0)
                            tracked.discard(tid)
                            break
                        ptrace(PTRACE_CONT, tid, 0)
                    elif event in (PTRACE_EVENT_STOP, PTRACE_EVENT_CLONE):
                        ptrace(PTRACE_CONT, tid, 0)
                    else:
                        ptrace(PTRACE_CONT, tid, sig)  # re-inject the signal
                    continue
                tracked.discard(tid)
                if tid == self.pid:
                    # The process ended without an exit stop (SIGKILL): already reaped.
                    self._reaped(status)
                    return
            # Traced threads that are still dying must be waited for by us, the tracer,
            # before the process can become a zombie for its parent (us again).
            for tid in tracked:
                while True:
                    try:
                        _, status = os.waitpid(tid, WALL)
                    except ChildProcessError:
                        break
                    if not os.WIFSTOPPED(status):
                        break
                    try:
                        ptrace(PTRACE_CONT, tid, 0)
                    except OSError:
                        pass
            if None not in runtime.values():
                self.runtime_ns = sum(runtime.values())
                self.threads = len(runtime)
        else:
            self.hwm_method = "VmHWM sampled every %d ms (last sample)" % (self.sample_s * 1000)
            while True:
                hwm, _ = read_status(self.pid)
                if hwm is not None:
                    self.hwm_kb = hwm
                r = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
                if r is not None:
                    break
                time.sleep(self.sample_s)
        # Exited (a zombie): its own CPU time is still in /proc/<pid>/stat.
        os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        self.t_exit = now()
        _, self.cpu_ticks = read_status(self.pid)
        _, status = os.waitpid(self.pid, 0)
        self._reaped(status)

    def _reaped(self, status):
        if self.t_exit is None:
            self.t_exit = now()
        self.exit_status = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.exit_status  # keep Popen from waiting on it


class PipeReader(threading.Thread):
    """Reads a pipe to its end, keeping (time, bytes) chunks."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe = pipe
        self.chunks = []

    def run(self):
        fd = self.pipe.fileno()
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            self.chunks.append((now(), data))

    def text(self):
        return b"".join(c for _, c in self.chunks)


def marker_time(chunks, pattern, start=0, nth=1):
    """Time of the chunk holding the end of the nth match of pattern at or after byte `start`
    of the concatenated stream; returns (time, end offset) or (None, None)."""
    data = b"".join(c for _, c in chunks)
    matches = list(re.finditer(pattern, data[start:]))
    if len(matches) < nth:
        return None, None
    end = start + matches[nth - 1].end()
    pos = 0
    for t, c in chunks:
        pos += len(c)
        if pos >= end:
            return t, end
    return None, None


def qemu_child_args(pid):
    """The argument vector of dutlab's QEMU child, if it has one running."""
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                for child in f.read().split():
                    with open("/proc/%s/cmdline" % child, "rb") as g:
                        argv = [a.decode() for a in g.read().split(b"\0")[:-1]]
                    if argv and "qemu-system" in os.path.basename(argv[0]):
                        return argv[1:]
    except OSError:
        pass
    return None


def normalise_args(args, root):
    args = [re.sub(re.escape(root) + r"[^,]*/", "<DIR>/", a) for a in args]
    return [re.sub(r"hostfwd=tcp:127\.0\.0\.1:\d+-", "hostfwd=tcp:127.0.0.1:<PORT>-", a) for a in args]


def run_dutlab(cfg, index):
    env = dict(os.environ)
    env["TMPDIR"] = cfg.dutlab_tmp
    env.pop("DUTLAB_LOG", None)
    t0 = now()
    proc = subprocess.Popen([cfg.dutlab, "run", cfg.job_rel], cwd=REPO, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, process_group=0)
    watcher = Watcher(proc, cfg.use_ptrace, cfg.sample_ms / 1000.0)
    watcher.start()
    cfg.live_dutlab = proc
    out = PipeReader(proc.stdout)
    err = PipeReader(proc.stderr)
    out.start()
    err.start()
    try:
        qemu_argv = None
        deadline = t0 + cfg.timeout
        while not watcher.done.wait(0.05):
            if cfg.check_args and qemu_argv is None and out.chunks:
                qemu_argv = qemu_child_args(proc.pid)
            if now() > deadline:
                raise BenchError("dutlab did not finish within %ds" % cfg.timeout)
        if watcher.error:
            raise watcher.error
        out.join(10)
        err.join(10)
        stdout, stderr = out.text(), err.text()
        proc.stdout.close()
        proc.stderr.close()
        passed = ("passed: %d passed" % len(cfg.case_names)).encode()
        if watcher.exit_status != 0 or passed not in stdout:
            raise BenchError("dutlab run failed (exit %s):\n%s\n%s" % (
                watcher.exit_status, stdout.decode(errors="replace")[-2000:],
                stderr.decode(errors="replace")[-2000:]))
        if cfg.check_args:
            if qemu_argv is None:
                raise BenchError("could not read the argument vector of dutlab's QEMU")
            mine = normalise_args(cfg.bare_args, cfg.root)
            theirs = normalise_args(qemu_argv, cfg.root)
            if mine != theirs:
                raise BenchError("bare QEMU arguments differ from dutlab's:\n  dutlab: %s\n  bare:   %s"
                                 % (theirs, mine))
            cfg.check_args = False
            cfg.checked_args = theirs
        first = out.chunks[0][0]
        t = {}
        t["running"], _ = marker_time(err.chunks, rb"dutlab: running job")
        t["started"], _ = marker_time(err.chunks, rb"QEMU started")
        t["login"], at = marker_time(out.chunks, rb"login:")
        t["shell"], at = marker_time(out.chunks, rb" # ", at or 0)
        t["ps1"], at_ps1 = marker_time(out.chunks, rb"dutlab-test: # ")
        t["stty"], at = marker_time(out.chunks, rb"dutlab-test: # ", at_ps1 or 0)
        t["startrun"], at_run = marker_time(out.chunks, rb"<LAVA_SIGNAL_STARTRUN")
        overlay_cmds = None
        if at is not None and at_run is not None:
            overlay_cmds = len(re.findall(rb"dutlab-test: # ", stdout[at:at_run]))
            t["overlay"], _ = marker_time(out.chunks, rb"dutlab-test: # ", at, overlay_cmds)
        t["endrun"], at = marker_time(out.chunks, rb"dutlab-test: # ", at_run or 0)
        t["table"], _ = marker_time(out.chunks, rb"SUITE ")
        phases = None
        if all(v is not None for v in t.values()):
            phases = {
                "start -> job parsed, image opened, runtime up": t["running"] - t0,
                "overlay pack, qemu-img, spawn QEMU, sockets, QMP": t["started"] - t["running"],
                "QMP cont -> first console byte": first - t["started"],
                "first byte -> login prompt": t["login"] - first,
                "login -> shell prompt": t["shell"] - t["login"],
                "PS1 + stty (2 round trips)": t["stty"] - t["shell"],
                "overlay transfer (%d round trips)" % overlay_cmds: t["overlay"] - t["stty"],
                "test run (sh .dutlab-run.sh)": t["endrun"] - t["overlay"],
                "QMP quit -> QEMU exit, cleanup, table": t["table"] - t["endrun"],
                "table -> process exit": watcher.t_exit - t["table"],
            }
        res = {
            "wall_s": watcher.t_exit - t0,
            "ttfb_s": first - t0,
            "setup_s": t["started"] - t0 if t["started"] else None,
            "boot_s": first - t["started"] if t["started"] else None,
            "cpu_s": watcher.cpu_ticks / os.sysconf("SC_CLK_TCK") if watcher.cpu_ticks is not None else None,
            "runtime_s": watcher.runtime_ns / 1e9 if watcher.runtime_ns is not None else None,
            "threads": watcher.threads,
            "hwm_kb": watcher.hwm_kb,
            "hwm_method": watcher.hwm_method,
            "overlay_cmds": overlay_cmds,
            "phases": phases,
        }
        if cfg.keep_transcripts:
            res["stdout"] = stdout.decode(errors="replace")
            res["stderr"] = stderr.decode(errors="replace")
        return res
    finally:
        if not watcher.done.is_set():
            # Ask politely first (dutlab powers its DUT off on SIGINT), then force.
            try:
                os.kill(proc.pid, signal.SIGINT)
            except OSError:
                pass
            if not watcher.done.wait(10):
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                watcher.done.wait(10)
        cfg.live_dutlab = None
        kill_strays(cfg.root)


# ---------------------------------------------------------------------------------------------
# --probe: what single console round trips cost in the guest (for finding dutlab's overhead)

TEST_PROMPT = rb"dutlab-test: # "
CHUNK = 900  # crates/runner/src/session.rs


def probe_files():
    """The files of a test overlay like dutlab's for the smoke job: the lava-* helpers and a
    run script (what crates/runner/src/overlay.rs packs), as {path: bytes}."""
    files = {}
    dut = os.path.join(REPO, "crates", "runner", "dut")
    for name in sorted(os.listdir(dut)):
        with open(os.path.join(dut, name), "rb") as f:
            files["/lava-dutlab/bin/" + name] = f.read()
    with open(os.path.join(REPO, "examples", "qemu-smoke.yaml")) as f:
        steps = re.findall(r"-\s+(lava-test-case\s+.*)", f.read())
    script = ("#!/bin/sh\n# dutlab test run 0_smoke (definition smoke)\n"
              ". /lava-dutlab/bin/lava-common\nexport PATH=/lava-dutlab/bin:$PATH\n"
              "export TESTRUN_ID='0_smoke'\ncd '/lava-dutlab/tests/0_smoke' || exit 1\n"
              "lava_signal '<LAVA_SIGNAL_STARTRUN 0_smoke 0123456789ab_0>'\n"
              + "\n".join(steps) + "\nlava_signal '<LAVA_SIGNAL_ENDRUN 0_smoke 0123456789ab_0>'\n")
    files["/lava-dutlab/tests/0_smoke/.dutlab-run.sh"] = script.encode()
    return files


def probe_overlay(files):
    """The files as a gzip-compressed tar, as dutlab packs them."""
    import gzip
    import io
    import tarfile
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path, body in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(body)
            info.mode = 0o755
            info.mtime = 0
            tar.addfile(info, io.BytesIO(body))
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def plain_transfer(files):
    """Shell lines that write `files` with the printf builtin only (no base64, gzip, tar or
    sha256sum in the DUT): mkdir -p, one printf per file (or per ~900 bytes), chmod +x."""
    def q(text):
        return "'" + text.replace("'", "'\\''") + "'"
    dirs = sorted({os.path.dirname(p) for p in files})
    lines = ["mkdir -p " + " ".join(dirs)]
    for path, body in files.items():
        words, size, first = [], 0, True
        for line in body.decode().split("\n")[:-1]:
            w = q(line)
            if words and size + len(w) > 850:
                lines.append("printf '%%s\\n' %s %s%s" % (" ".join(words), ">" if first else ">>", path))
                words, size, first = [], 0, False
            words.append(w)
            size += len(w) + 1
        lines.append("printf '%%s\\n' %s %s%s" % (" ".join(words), ">" if first else ">>", path))
    lines.append("chmod +x /lava-dutlab/bin/*")
    return lines


def probe_cold(cfg, label, lines, run_after=None):
    """Boots bare QEMU, prepares the shell as dutlab does, and times `lines` once (cold: the
    first time the guest runs that code, TCG translates it) and, if given, `run_after`."""
    deadline = now() + cfg.timeout
    vm = BareVm(cfg, "probe-cold")
    out = []
    try:
        vm.start(deadline)
        vm.login(deadline)
        c = vm.console
        c.send("export PS1='dutlab''-test: # '")
        c.expect(TEST_PROMPT, deadline, "test prompt")
        c.send("stty -echo cols 1000 rows 50 2>/dev/null || stty -echo; echo DUTLAB_RC=$?")
        c.expect(TEST_PROMPT, deadline, "test prompt")
        for what, seq in ((label, lines), ("then, cold: " + (run_after or [""])[0], run_after)):
            if not seq:
                continue
            t = now()
            for line in seq:
                c.send(line)
                got = c.expect(TEST_PROMPT, deadline, "prompt")
                if b"DUTLAB_RC=" in got and b"DUTLAB_RC=0" not in got:
                    raise BenchError("probe: %r failed: %r" % (line[:60], got))
            out.append((what, now() - t, None))
        vm.quit(deadline)
    finally:
        vm.close()
    return out


def probe(cfg):
    import base64
    import hashlib
    deadline = now() + cfg.timeout
    vm = BareVm(cfg, "probe")
    files = probe_files()
    packed = probe_overlay(files)
    b64 = base64.b64encode(packed).decode()
    sha = hashlib.sha256(packed).hexdigest()
    chunks = [b64[i:i + CHUNK] for i in range(0, len(b64), CHUNK)]
    results = []
    try:
        vm.start(deadline)
        vm.login(deadline)
        c = vm.console

        def send_all(lines, prompts):
            for line in lines:
                c.send(line)
            outs = [c.expect(TEST_PROMPT, deadline, "prompt") for _ in range(prompts)]
            for out in outs:
                if b"DUTLAB_RC=" in out and b"DUTLAB_RC=0" not in out:
                    raise BenchError("probe: a command failed: %r" % out)

        def cmd(line):
            return line + "; echo DUTLAB_RC=$?"

        # dutlab's prepare_shell, timed: the first two commands after login, echo still on.
        t = now()
        c.send("export PS1='dutlab''-test: # '")
        c.expect(TEST_PROMPT, deadline, "test prompt")
        results.append(("first command after login: export PS1=... (echo on)", now() - t, None))
        t = now()
        send_all([cmd("stty -echo cols 1000 rows 50 2>/dev/null || stty -echo")], 1)
        results.append(("then stty -echo cols 1000 rows 50 (echo on until it runs)", now() - t, None))

        def measure(label, lines, prompts=None, reps=cfg.probe_reps, setup=None):
            times = []
            for _ in range(reps):
                if setup:
                    send_all(setup, len(setup))
                t = now()
                send_all(lines, len(lines) if prompts is None else prompts)
                times.append(now() - t)
            results.append((label, statistics.median(times), min(times)))

        stty = "stty -echo cols 1000 rows 50 2>/dev/null || stty -echo"
        ps1 = "export PS1='dutlab''-test: # '"
        echo_on = [cmd("stty echo")]
        measure("no-op round trip (`true; echo DUTLAB_RC=$?`), echo off", [cmd("true")])
        measure("export PS1=... (builtin), echo off", [cmd(ps1)])
        measure("stty -echo cols 1000 rows 50 (fork+exec), echo off", [cmd(stty)])
        measure("export PS1=..., typed with echo on", [cmd(ps1)], setup=echo_on)
        measure("stty -echo cols 1000 rows 50, typed with echo on", [cmd(stty)], setup=echo_on)
        measure("`stty -echo cols 1000 rows 50; export PS1=...` as one line, typed with echo on",
                [cmd("stty -echo cols 1000 rows 50; " + ps1)], setup=echo_on)
        measure("the bare side's 4 commands (%d chars), typed with echo on" % len(cfg.command_line),
                [cfg.command_line + "; echo DUTLAB_RC=0"], setup=echo_on)
        send_all([cmd("stty -echo")], 1)
        measure("the bare side's 4 commands, echo off", [cfg.command_line + "; echo DUTLAB_RC=0"])
        measure("printf %s <100 base64 chars> >>file", [cmd("printf %%s %s >>/tmp/q.b64" % b64[:100])])
        measure("printf %s <900 base64 chars> >>file", [cmd("printf %%s %s >>/tmp/q.b64" % b64[:900])])
        rm_tmp = cmd("rm -f /tmp/p.b64 /tmp/p.tgz")
        decode = cmd("base64 -d /tmp/p.b64 >/tmp/p.tgz && sha256sum /tmp/p.tgz")
        untar = cmd("rm -rf /lava-dutlab && tar -xzf /tmp/p.tgz -C / && rm -f /tmp/p.b64 /tmp/p.tgz")
        today = [rm_tmp] + [cmd("printf %%s %s >>/tmp/p.b64" % ch) for ch in chunks] + [decode, untar]
        measure("rm -f (fork+exec)", [rm_tmp])
        measure("base64 -d && sha256sum (2 fork+exec)", [decode], setup=today[:-2])
        measure("rm -rf && tar -xzf && rm -f (3 fork+exec)", [untar], setup=today[:-1])
        measure("overlay as dutlab sends it today (%d bytes gz, %d base64 chars): %d round trips, "
                "6 fork+exec" % (len(packed), len(b64), len(today)), today)
        measure("the same lines written at once, then %d prompts awaited" % len(today), today)
        # Fewer round trips and processes: the first chunk truncates the file (no rm), the
        # sha256 is checked in the DUT (sha256sum -c), nothing is removed afterwards.
        tail = ("base64 -d /tmp/p.b64 >/tmp/p.tgz && echo '%s  /tmp/p.tgz' | sha256sum -c -s - "
                "&& tar -xzf /tmp/p.tgz -C /" % sha)
        fewer = ["printf %%s %s %s/tmp/p.b64" % (ch, ">" if i == 0 else ">>") for i, ch in enumerate(chunks)]
        if len(cmd(fewer[-1] + " && " + tail)) <= 1000:
            fewer[-1] += " && " + tail
        else:
            fewer.append(tail)
        fewer = [cmd(line) for line in fewer]
        measure("overlay, proposed: %d round trips, 3 fork+exec (base64, sha256sum -c, tar)"
                % len(fewer), fewer)
        # One command with a here-document: one round trip whatever the size.
        body = [b64[i:i + 76] for i in range(0, len(b64), 76)]
        heredoc = ["base64 -d >/tmp/p.tgz <<'DUTLAB_EOF' && echo '%s  /tmp/p.tgz' | sha256sum -c -s - "
                   "&& tar -xzf /tmp/p.tgz -C /; echo DUTLAB_RC=$?" % sha] + body + ["DUTLAB_EOF"]
        measure("overlay in one here-document command (1 round trip, 3 fork+exec)", heredoc, prompts=1)
        measure("one lava-test-case call (a sh script)",
                [cmd("/lava-dutlab/bin/lava-test-case x --result pass >/dev/null")])
        measure("the signal line it prints, echoed by the shell itself",
                [cmd("echo '<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=pass>' >/dev/null")])
        vm.quit(deadline)
    finally:
        vm.close()
    # The same transfers once each on a fresh boot: what a run pays, TCG translation included.
    def cmd(line):
        return line + "; echo DUTLAB_RC=$?"
    run = [cmd("sh /lava-dutlab/tests/0_smoke/.dutlab-run.sh >/dev/null")]
    plain = [cmd(line) for line in plain_transfer(files)]
    script_only = [cmd(line) for line in plain_transfer(
        {k: v for k, v in files.items() if "/tests/" in k})[:-1]]
    cold = {}
    for _ in range(cfg.probe_boots):
        for label, took, _ in (
                probe_cold(cfg, "overlay as dutlab sends it today (%d round trips, 6 fork+exec)"
                           % len(today), today, run)
                + probe_cold(cfg, "overlay, proposed: %d round trips, 3 fork+exec" % len(fewer), fewer)
                + probe_cold(cfg, "overlay as plain printf builtins (%d lines, %d chars; mkdir, chmod)"
                             % (len(plain), sum(len(x) for x in plain)), plain)
                + probe_cold(cfg, "only the run script as printf builtins (helpers in the image)",
                             script_only)):
            cold.setdefault(label, []).append(took)
    print("each on a fresh boot right after PS1 and stty (cold: the guest runs that code for the "
          "first time), median of %d boots:" % cfg.probe_boots)
    for label, times in cold.items():
        print("  %-82s %9s" % (label, fmt_ms(statistics.median(times))))
    print()
    print("console round trips in the bare guest, PS1 set as dutlab sets it; %d reps each"
          % cfg.probe_reps)
    print("  %-82s %9s %9s" % ("command(s)", "median", "min"))
    for label, med, low in results:
        print("  %-82s %9s %9s" % (label, fmt_ms(med), fmt_ms(low) if low is not None else "(once)"))


# ---------------------------------------------------------------------------------------------
# Clean-up


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def kill_strays(root):
    """Kills (by process group) every process whose command line mentions `root`."""
    me = os.getpid()
    mine = os.getpgrp()
    needle = root.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                if needle not in f.read():
                    continue
            pgid = os.getpgid(pid)
        except OSError:
            continue
        if pgid != mine:
            kill_group(pgid)
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def cpu_busy(interval=1.0):
    """Fraction of all CPUs busy over `interval` seconds (from /proc/stat)."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v) - idle, sum(v)
    b0, t0 = sample()
    time.sleep(interval)
    b1, t1 = sample()
    return (b1 - b0) / max(1, t1 - t0)


def wait_quiet(cfg):
    """Waits (up to --quiet-wait seconds) until the host is nearly idle; returns the busy
    fraction seen last, so every round records how busy the machine was before it."""
    limit = now() + cfg.quiet_wait
    while True:
        busy = cpu_busy()
        if busy <= cfg.quiet_busy or now() >= limit:
            return busy


# ---------------------------------------------------------------------------------------------
# Report


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_s(x):
    return "n/a" if x is None else "%.3f s" % x


def fmt_ms(x):
    return "n/a" if x is None else "%.1f ms" % (x * 1000)


def report(cfg, rows):
    a = [r["dutlab"] for r in rows]
    b = [r["bare"] for r in rows]
    ratios = [x["wall_s"] / y["wall_s"] for x, y in zip(a, b)]
    wa, wb = median([x["wall_s"] for x in a]), median([y["wall_s"] for y in b])
    ta, tb = median([x["ttfb_s"] for x in a]), median([y["ttfb_s"] for y in b])
    cpu = median([x["cpu_s"] for x in a])
    hwm = median([x["hwm_kb"] for x in a])
    hwm_max = max((x["hwm_kb"] for x in a if x["hwm_kb"] is not None), default=None)
    lines = []
    lines.append("rounds: %d (A=dutlab, B=bare, alternating %s; %d warm-up pair(s) discarded)"
                 % (len(rows), "B A B A ..." if cfg.bare_first else "A B A B ...", cfg.warmup))
    lines.append("")
    lines.append("round  dutlab wall  bare wall  ratio  dutlab cpu    dutlab VmHWM  ttfb dutlab  ttfb bare  busy")
    for i, (x, y, q) in enumerate(zip(a, b, ratios)):
        lines.append("%5d  %9.3f s  %7.3f s  %5.3f  %8.1f ms  %8.1f MiB  %8.1f ms  %6.1f ms  %3.0f%%" % (
            i + 1, x["wall_s"], y["wall_s"], q, (x.get("runtime_s") or x["cpu_s"] or 0) * 1000,
            (x["hwm_kb"] or 0) / 1024, x["ttfb_s"] * 1000, y["ttfb_s"] * 1000, rows[i]["busy_before"] * 100))
    lines.append("(busy: share of all host CPUs in use in the second before a run, the higher of the two)")
    lines.append("")
    lines.append("median wall time, dutlab run            %s" % fmt_s(wa))
    lines.append("median wall time, bare QEMU             %s" % fmt_s(wb))
    lines.append("median ratio dutlab/bare (per round)    %.3f   (ratio of medians %.3f)"
                 % (statistics.median(ratios), wa / wb))
    rt = median([x.get("runtime_s") for x in a])
    lines.append("dutlab CPU user+sys (own, median)       %s from /proc/<pid>/stat at exit (%d ms ticks)"
                 % (fmt_ms(cpu), 1000 // os.sysconf("SC_CLK_TCK")))
    lines.append("dutlab on-CPU time, all its threads     %s (sum of schedstat at each thread's exit stop)"
                 % fmt_ms(rt))
    lines.append("dutlab peak RSS VmHWM (own, median/max) %.1f / %.1f MiB   [%s]" % (
        (hwm or 0) / 1024, (hwm_max or 0) / 1024, a[0]["hwm_method"]))
    lines.append("first console byte, dutlab (from spawn) %s" % fmt_ms(ta))
    lines.append("first console byte, bare (from spawn)   %s" % fmt_ms(tb))
    lines.append("difference dutlab - bare                %s" % fmt_ms(None if ta is None or tb is None else ta - tb))
    over = [(x["wall_s"] - x["boot_s"]) - (y["wall_s"] - y["boot_s"]) for x, y in zip(a, b)
            if x["boot_s"] is not None]
    if over:
        lines.append("runner overhead with guest boot excluded  %s per run (median over rounds of"
                     % fmt_ms(statistics.median(over)))
        lines.append("  (dutlab wall - its guest boot) - (bare wall - its guest boot)); as a ratio on the")
        lines.append("  bare median: %.3f" % (1 + statistics.median(over) / wb))
    diffs = [x["ttfb_s"] - y["ttfb_s"] for x, y in zip(a, b)]
    lines.append("  per-round difference, median          %s" % fmt_ms(statistics.median(diffs)))
    lines.append("  of which: setup until the guest runs (QMP cont): dutlab %s from its start;"
                 % fmt_ms(median([x["setup_s"] for x in a])))
    lines.append("            bare %s from QEMU spawn, %s with qemu-img create"
                 % (fmt_ms(median([y["setup_qemu_s"] for y in b])), fmt_ms(median([y["setup_s"] for y in b]))))
    lines.append("  and guest boot (QMP cont -> first serial byte): dutlab %s, bare %s"
                 % (fmt_ms(median([x["boot_s"] for x in a])), fmt_ms(median([y["boot_s"] for y in b]))))
    for side, runs in (("dutlab", a), ("bare", b)):
        names = []
        for r in runs:
            for k in (r.get("phases") or {}):
                if k not in names:
                    names.append(k)
        if not names:
            continue
        lines.append("")
        lines.append("where the time goes, %s (medians):" % side)
        for k in names:
            lines.append("  %-52s %9s" % (k, fmt_ms(median([(r.get("phases") or {}).get(k) for r in runs]))))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dutlab", required=True, help="the dutlab binary (release build)")
    p.add_argument("--job", default="examples/qemu-smoke.yaml", help="job file, relative to the repository")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="discarded A B pairs before the rounds")
    p.add_argument("--timeout", type=int, default=300, help="seconds per run")
    p.add_argument("--bare-first", action="store_true", help="B A B A ... instead of A B A B ...")
    p.add_argument("--qemu", default=QEMU_BINARY)
    p.add_argument("--image-dir", help="guest image (default: `dutlab image path`)")
    p.add_argument("--no-ptrace", action="store_true", help="sample VmHWM instead of reading it at exit")
    p.add_argument("--sample-ms", type=int, default=20)
    p.add_argument("--quiet-wait", type=float, default=120,
                   help="before each round, wait up to this many seconds for an idle host")
    p.add_argument("--quiet-busy", type=float, default=0.10,
                   help="idle means at most this share of all CPUs busy (default 0.10)")
    p.add_argument("--json", help="write every figure here")
    p.add_argument("--probe", action="store_true",
                   help="instead of the benchmark, boot bare QEMU once and time single console "
                        "round trips (what dutlab's setup and overlay transfer cost)")
    p.add_argument("--probe-reps", type=int, default=10, help="repetitions of each warm probe")
    p.add_argument("--probe-boots", type=int, default=3, help="fresh boots per cold probe")
    p.add_argument("--transcripts", action="store_true", help="keep console transcripts in --json")
    cfg = p.parse_args()
    cfg.dutlab = os.path.abspath(cfg.dutlab)
    cfg.use_ptrace = not cfg.no_ptrace
    cfg.keep_transcripts = cfg.transcripts
    cfg.job_rel = cfg.job
    if cfg.rounds < 1:
        p.error("--rounds must be at least 1")
    if not cfg.image_dir:
        cfg.image_dir = subprocess.run([cfg.dutlab, "image", "path"], check=True,
                                       capture_output=True, text=True).stdout.strip()
    if not os.path.isfile(os.path.join(cfg.image_dir, "image.json")):
        sys.exit("bench: no guest image in %s (run `dutlab image build`)" % cfg.image_dir)
    cfg.kernel = os.path.join(cfg.image_dir, "vmlinuz")
    cfg.initrd = os.path.join(cfg.image_dir, "initramfs.cpio.gz")
    cfg.rootfs = os.path.abspath(os.path.join(cfg.image_dir, "rootfs.qcow2"))
    cfg.command_line, cfg.case_names = smoke_commands(os.path.join(REPO, cfg.job))
    cfg.live_groups = set()
    cfg.live_dutlab = None
    cfg.bare_args = None  # set once the private directory exists
    cfg.check_args = True
    cfg.checked_args = None

    def on_term(signum, frame):
        raise SystemExit("bench: terminated by signal %d" % signum)

    def on_int(signum, frame):
        raise KeyboardInterrupt

    # Installed even when SIGINT was inherited as ignored (a background job): any of these
    # signals ends the benchmark through the clean-up below.
    signal.signal(signal.SIGINT, on_int)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    cfg.root = tempfile.mkdtemp(prefix="dutlab-bench-")
    cfg.dutlab_tmp = os.path.join(cfg.root, "dutlab")
    os.mkdir(cfg.dutlab_tmp)
    sample = os.path.join(cfg.root, "bare-0")
    cfg.bare_args = qemu_args(cfg.kernel, cfg.initrd, os.path.join(sample, "rootfs.overlay.qcow2"),
                              os.path.join(sample, "vm-0"))
    rows = []
    try:
        print("bench: dutlab %s, job %s, image %s" % (cfg.dutlab, cfg.job, cfg.image_dir), file=sys.stderr)
        print("bench: bare command line: %s" % cfg.command_line, file=sys.stderr)
        if cfg.probe:
            probe(cfg)
            return
        n = 0
        for i in range(cfg.warmup + cfg.rounds):
            warm = i < cfg.warmup
            # Every run is preceded by the same idle check (about 1 s), so both sides start
            # from the same state: on this VM, a QEMU started right after another one exited
            # boots measurably faster than one started after an idle second.
            busy = []
            for side in ("bare", "dutlab") if cfg.bare_first else ("dutlab", "bare"):
                busy.append(wait_quiet(cfg))
                if side == "bare":
                    bare = run_bare(cfg, n)
                else:
                    dut = run_dutlab(cfg, n)
            busy = max(busy)
            n += 1
            tag = "warm-up" if warm else "round %d" % (i - cfg.warmup + 1)
            print("bench: %-8s dutlab %.3f s  bare %.3f s  ratio %.3f" % (
                tag, dut["wall_s"], bare["wall_s"], dut["wall_s"] / bare["wall_s"]), file=sys.stderr)
            if not warm:
                rows.append({"dutlab": dut, "bare": bare, "busy_before": busy})
        text = report(cfg, rows)
        print(text)
        if cfg.checked_args:
            print("\nQEMU arguments (identical on both sides, paths shown as <DIR>):\n  %s"
                  % " ".join(cfg.checked_args))
        if cfg.json:
            with open(cfg.json, "w") as f:
                json.dump({"rounds": rows, "qemu_args": cfg.checked_args,
                           "bare_command_line": cfg.command_line}, f, indent=1)
    finally:
        if cfg.live_dutlab is not None and cfg.live_dutlab.returncode is None:
            try:
                os.kill(cfg.live_dutlab.pid, signal.SIGKILL)
            except OSError:
                pass
        for pgid in list(cfg.live_groups):
            kill_group(pgid)
        kill_strays(cfg.root)
        shutil.rmtree(cfg.root, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        sys.exit("bench: error: %s" % e)
    except KeyboardInterrupt:
        sys.exit("bench: interrupted")
