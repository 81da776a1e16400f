"""The untrusted side of grading: a reaper that outlives nothing it started, and a worker that
runs a student's notebook and then answers calls of the functions it handed to the checks.

Process tree, for one notebook::

    grader (trusted: runs the checks, keeps the record)
      └─ reaper      python -m geoattn.course._sandbox reap ...   (child subreaper, Linux)
           └─ worker python -m geoattn.course._sandbox work ...   (the student's code runs here)
                └─ whatever the student's code starts, setsid() or not

The worker never decides a verdict. It executes the notebook's code cells in an IPython
shell; every ``check_*`` call there only records which function the student handed in.
Then it waits for the grader's calls (``fn(*args)`` on inputs the grader chose) and sends
back what the function returned, encoded as plain data (:func:`encode` / :func:`decode`:
JSON and raw tensor bytes, never pickle, so decoding runs none of the student's code).

The reaper is a child subreaper (``PR_SET_CHILD_SUBREAPER``): every orphan in the tree,
double-forked and ``setsid()`` included, is re-parented to it instead of to init, so when
the grader is done (or dies: the reaper's stdin closes), the reaper kills every process
below it until none is left. Where prctl is missing (not Linux), it falls back to killing
the worker's process group, which ``setsid()`` escapes; the grader still never waits on
anything without a deadline.
"""
from __future__ import annotations

import json
import os
import select
import signal
import struct
import sys
import time

__all__ = ["encode", "decode", "send", "receive", "ProtocolError", "kill_descendants"]

MAX_FRAME = 256 * 2**20  # no check hands over or gets back anything near this
_HEADER = struct.Struct(">II")  # JSON length, bytes length


class ProtocolError(Exception):
    """The other side sent something that is not a frame of ours (or nothing, in time)."""


# --------------------------------------------------------------------------- the codec

def _encode(obj, buffers: list[bytes], depth: int = 0):
    import torch

    if depth > 20:
        return {"opaque": type(obj).__name__}
    if obj is None or isinstance(obj, (bool, int, str)):
        return {"v": obj} if not isinstance(obj, int) or abs(obj) < 2**62 else {"opaque": "int"}
    if isinstance(obj, float):
        return {"f": repr(obj)}
    if isinstance(obj, torch.dtype):
        return {"dtype": str(obj).removeprefix("torch.")}
    if isinstance(obj, (tuple, list)):
        return {"seq": "tuple" if isinstance(obj, tuple) else "list",
                "items": [_encode(e, buffers, depth + 1) for e in obj]}
    if isinstance(obj, torch.nn.Linear):
        return {"linear": [_encode(obj.weight.detach(), buffers, depth + 1),
                           _encode(None if obj.bias is None else obj.bias.detach(), buffers, depth + 1)]}
    if isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided:
            return {"opaque": type(obj).__name__}
        t = obj.detach()
        head = {"tensor": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "device": t.device.type}
        if t.device.type == "meta":
            return head
        data = t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        head["buf"] = len(buffers)
        buffers.append(data)
        return head
    out = {"opaque": type(obj).__name__}
    try:  # a numpy scalar, say, where a number belongs
        if hasattr(obj, "__float__"):
            out["float"] = repr(float(obj))
    except Exception:
        pass
    return out


def encode(obj) -> tuple[dict, list[bytes]]:
    buffers: list[bytes] = []
    return _encode(obj, buffers), buffers


def _opaque(name: str, number: float | None):
    """A stand-in whose type has the name of what came back, so the check can name it."""
    namespace = {"__repr__": lambda self: f"<{name}>"}
    if number is not None:
        namespace["__float__"] = lambda self: number
    safe = name if name.isidentifier() else "object"
    return type(safe, (), namespace)()


def decode(tree, buffers: list[bytes], depth: int = 0):
    """The inverse of :func:`encode`; anything malformed raises ProtocolError."""
    import torch

    if depth > 22 or not isinstance(tree, dict):
        raise ProtocolError("malformed value")
    if "v" in tree:
        v = tree["v"]
        if v is None or isinstance(v, (bool, int, str)):
            return v
    elif "f" in tree:
        return float(str(tree["f"]))
    elif "dtype" in tree:
        dtype = getattr(torch, str(tree["dtype"]), None)
        if isinstance(dtype, torch.dtype):
            return dtype
    elif "seq" in tree and isinstance(tree.get("items"), list):
        items = [decode(e, buffers, depth + 1) for e in tree["items"]]
        return tuple(items) if tree["seq"] == "tuple" else items
    elif "linear" in tree:
        weight, bias = (decode(e, buffers, depth + 1) for e in tree["linear"])
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer.requires_grad_(False)
    elif "tensor" in tree:
        dtype = getattr(torch, str(tree["tensor"]), None)
        shape = tree.get("shape")
        if not isinstance(dtype, torch.dtype) or not isinstance(shape, list) or not all(
                isinstance(n, int) and 0 <= n for n in shape):
            raise ProtocolError("malformed tensor")
        if tree.get("device") == "meta":
            return torch.empty(shape, dtype=dtype, device="meta")
        index = tree.get("buf")
        if not isinstance(index, int) or not 0 <= index < len(buffers):
            raise ProtocolError("malformed tensor")
        data = buffers[index]
        numel = 1
        for n in shape:
            numel *= n
        if len(data) != numel * dtype.itemsize:
            raise ProtocolError("tensor bytes do not match its shape")
        if numel == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape).clone()
    elif "opaque" in tree:
        number = tree.get("float")
        return _opaque(str(tree["opaque"])[:80], float(number) if isinstance(number, str) else None)
    raise ProtocolError("malformed value")


# -------------------------------------------------------------------------- the frames

def send(fd: int, message: dict, buffers: list[bytes] = (), deadline: float | None = None) -> None:
    """Write one frame; with ``deadline`` (``fd`` non-blocking) raise TimeoutError past it."""
    head = json.dumps({**message, "sizes": [len(b) for b in buffers]}).encode()
    data = b"".join(buffers)
    payload = _HEADER.pack(len(head), len(data)) + head + data
    view = memoryview(payload)
    while view:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                raise TimeoutError
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            continue
        view = view[written:]


def _read_exact(fd: int, n: int, deadline: float) -> bytes:
    chunks, got = [], 0
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            raise TimeoutError
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise ProtocolError("the other side closed the pipe")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def receive(fd: int, deadline: float) -> tuple[dict, list[bytes]]:
    """One frame from ``fd``, or TimeoutError at ``deadline`` (time.monotonic()), or ProtocolError."""
    n_head, n_data = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    if n_head > 2**20 or n_data > MAX_FRAME:
        raise ProtocolError("frame too large")
    try:
        message = json.loads(_read_exact(fd, n_head, deadline))
    except (ValueError, RecursionError):
        raise ProtocolError("malformed frame") from None
    data = _read_exact(fd, n_data, deadline)
    sizes = message.get("sizes") if isinstance(message, dict) else None
    if not isinstance(sizes, list) or not all(isinstance(s, int) and s >= 0 for s in sizes) or sum(sizes) != n_data:
        raise ProtocolError("malformed frame")
    buffers, at = [], 0
    for s in sizes:
        buffers.append(data[at:at + s])
        at += s
    return message, buffers


# -------------------------------------------------------------------------- the reaper

def _set_subreaper() -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _reap_all() -> list[tuple[int, int]]:
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append((pid, status))


def kill_descendants(root: int | None = None, rounds: int = 200, *, reap: bool = True) -> None:
    """SIGKILL every process below ``root`` (default: this one) until none is left.

    Stopping first keeps a fork loop from outrunning us; as a subreaper, every orphan in the
    tree is our child, so a later round still finds what an earlier one re-parented.
    ``reap=False`` leaves zombies to their parent: for a caller (the grader) whose other
    children's exit statuses belong to someone else.
    """
    root = os.getpid() if root is None else root
    quiet = 0
    for _ in range(rounds):
        pids = _descendants(root) if os.path.isdir("/proc") else []
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        if reap:
            _reap_all()
        quiet = quiet + 1 if not pids else 0
        if quiet >= 2:
            return
        time.sleep(0.02)


def reap_main(argv: list[str]) -> int:
    """``reap LOG FD_IN FD_OUT -- WORKER...``: run the worker, report its exit, and kill the
    whole tree when the grader writes to (or closes) this process's stdin."""
    log_path, fd_in, fd_out = argv[0], int(argv[1]), int(argv[2])
    worker_argv = argv[argv.index("--") + 1:]
    subreaper = _set_subreaper()
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    pid = os.fork()
    if pid == 0:  # the worker: its own session, the protocol fds and the log only
        try:
            os.setsid()
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            for fd in (fd_in, fd_out):
                os.set_inheritable(fd, True)
            os.execv(worker_argv[0], worker_argv)
        finally:
            os._exit(127)
    os.close(log)
    os.close(fd_in)
    os.close(fd_out)
    out = sys.stdout.buffer
    out.write(f"started {pid} subreaper={int(subreaper)}\n".encode())
    out.flush()
    reported = False
    while True:
        ready, _, _ = select.select([0], [], [], 0.2)
        for child, status in _reap_all():
            if child == pid and not reported:
                out.write(f"exited {os.waitstatus_to_exitcode(status)}\n".encode())
                out.flush()
                reported = True
        if ready:
            try:
                os.read(0, 64)
            except OSError:
                pass
            break  # any word, or the grader's end closing, means: end everything now
    if not subreaper:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    kill_descendants()
    return 0


# -------------------------------------------------------------------------- the worker

def _describe(fn) -> dict:
    from .checks._harness import _library_name

    try:
        info = {"callable": callable(fn), "typename": type(fn).__name__[:80]}
        library = _library_name(fn) if info["callable"] else None
        if library:
            module, _, qualname = library.rpartition(".")
            info.update(module=module, qualname=qualname)
        return info
    except Exception:
        return {"callable": False, "typename": "object"}


def work_main(argv: list[str]) -> int:
    """``work NOTEBOOK FD_IN FD_OUT UPTO``: run the first UPTO code cells (all if -1), then serve calls."""
    path, fd_in, fd_out, upto = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    import nbformat

    nb = nbformat.read(path, as_version=4)
    import geoattn.course.checks as checks
    from geoattn.course.checks import _harness

    recorded: dict = {}
    current = {"cell": -1}

    def recorder(name):
        def record(fn=None, *args, **kwargs):
            recorded[name] = fn
            send(fd_out, {"type": "record", "check": name, "cell": current["cell"], **_describe(fn)})
            return _harness.CheckResult(name, False, f"(recorded for grading: {name})", "recorded")
        record.__name__ = name
        return record

    for name in [n for n in checks.__all__ if n.startswith("check_")]:
        stand_in = recorder(name)
        setattr(checks, name, stand_in)
        for module_name, module in list(sys.modules.items()):
            if module_name.startswith("geoattn.course.checks.") and hasattr(module, name):
                setattr(module, name, stand_in)
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    code_cells = [c for c in nb.cells if c.get("cell_type") == "code"]
    for index, cell in enumerate(code_cells if upto < 0 else code_cells[:upto]):
        current["cell"] = index
        result = shell.run_cell(cell.source, store_history=False)
        error = result.error_in_exec or result.error_before_exec
        text = None
        if error is not None:
            try:
                text = f"{type(error).__name__}: {str(error)[:200]}"
            except Exception:
                text = type(error).__name__
        send(fd_out, {"type": "cell", "index": index, "error": text})
    send(fd_out, {"type": "ready"})
    while True:
        message, buffers = receive(fd_in, time.monotonic() + 10**7)
        fn = recorded.get(message.get("check"))
        try:
            args = decode(message["args"], buffers)
            value, kind = fn(*args), "ok"
        except BaseException as err:  # whatever the student's function raises is its answer
            try:
                text = str(err)[:2000]
            except BaseException:
                text = ""
            kind, value = "raised", None
            reply = {"type": "result", "kind": kind, "name": type(err).__name__[:80], "message": text,
                     "not_implemented": isinstance(err, NotImplementedError)}
            send(fd_out, reply)
            continue
        try:
            tree, out = encode((value, args))
        except Exception:
            tree, out = encode((_opaque(type(value).__name__, None), ()))
        send(fd_out, {"type": "result", "kind": kind, "value": tree}, out)


def main(argv: list[str]) -> int:
    if argv[:1] == ["reap"]:
        return reap_main(argv[1:])
    if argv[:1] == ["work"]:
        return work_main(argv[1:])
    print("usage: python -m geoattn.course._sandbox reap|work ...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
