#!/usr/bin/env python3
"""An independent varlink client for cfs's composefs service (tests only).

Written from the protocol description, not from cfs's sources: NUL-terminated JSON over a
unix stream socket, fds as SCM_RIGHTS. Fds belong to the message that holds the last byte of
the recvmsg that returned them; we send a message's fds with the sendmsg of its first bytes.

Usage: varlink_client.py COMMAND SOCKET ARGS...   (prints one JSON document on stdout)
"""
import hashlib
import json
import os
import socket
import struct
import sys
import time
import threading

META, INLINE, FILE = 0, 1, 2


class VarlinkError(Exception):
    def __init__(self, reply):
        super().__init__(json.dumps(reply))
        self.reply = reply


def log_reply(method, reply):
    """Appends {method, reply} to $VARLINK_REPLY_LOG (JSON lines), for checks against the IDL."""
    path = os.environ.get("VARLINK_REPLY_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"method": method, "reply": reply}) + "\n")


class Conn:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # "@name": the abstract namespace, as varlink addresses write it.
        self.s.connect("\0" + path[1:] if path.startswith("@") else path)
        self.buf = b""
        self.pending_fds = []  # fds of the incomplete message at the end of buf
        self.ready = []  # (message bytes, fds)

    def close(self):
        self.s.close()

    def send(self, obj, fds=()):
        data = json.dumps(obj).encode() + b"\0"
        if fds:
            n = socket.send_fds(self.s, [data], list(fds))
            self.s.sendall(data[n:])
        else:
            self.s.sendall(data)

    def _fill(self):
        data, fds, _flags, _addr = socket.recv_fds(self.s, 1 << 20, 253)
        if not data:
            raise EOFError("server closed the connection")
        self.buf += data
        # Fds go to the message containing the last byte just received.
        last_msg_ends_here = data.endswith(b"\0")
        parts = self.buf.split(b"\0")
        self.buf = parts.pop()
        for i, p in enumerate(parts):
            mine, self.pending_fds = self.pending_fds, []
            if last_msg_ends_here and i == len(parts) - 1:
                mine = mine + list(fds)
            self.ready.append((p, mine))
        if not last_msg_ends_here:
            self.pending_fds += list(fds)

    def recv(self):
        while not self.ready:
            self._fill()
        raw, fds = self.ready.pop(0)
        return json.loads(raw), fds

    def call(self, method, params=None, more=False, fds=()):
        """Returns [(parameters, fds)] for every reply frame; raises VarlinkError."""
        msg = {"method": method, "parameters": params or {}}
        if more:
            msg["more"] = True
        self.send(msg, fds)
        frames = []
        while True:
            reply, rfds = self.recv()
            log_reply(method, reply)
            if "error" in reply:
                for fd in rfds:
                    os.close(fd)
                for _, fl in frames:
                    for fd in fl:
                        os.close(fd)
                raise VarlinkError(reply)
            frames.append((reply.get("parameters", {}), rfds))
            if not reply.get("continues"):
                return frames


def call1(conn, method, params=None):
    return conn.call(method, params)[0][0]


def open_repo(conn, path):
    return call1(conn, "org.composefs.Repository.OpenRepository", {"path": path})["handle"]


def read_exact(fd, n):
    out = bytearray()
    while len(out) < n:
        b = os.read(fd, n - len(out))
        if not b:
            raise EOFError("stream truncated")
        out += b
    return bytes(out)


def parse_stream(fd):
    """Yields ('bytes', data) / ('file', length, index, name) chunks until a clean EOF."""
    while True:
        t = os.read(fd, 1)
        if not t:
            return
        if t[0] in (META, INLINE):
            (n,) = struct.unpack("<I", read_exact(fd, 4))
            yield ("bytes", t[0], read_exact(fd, n))
        elif t[0] == FILE:
            length, index, nlen = struct.unpack("<QII", read_exact(fd, 16))
            yield ("file", length, index, read_exact(fd, nlen).decode())
        else:
            raise ValueError("unknown chunk type %d" % t[0])


def get_layer(conn, handle, diff_id):
    """GetLayer with more=true: returns (data fd, dir fds, every fd to close afterwards)."""
    frames = conn.call("org.composefs.Oci.GetLayer", {"handle": handle, "params": {"diff_id": diff_id}}, more=True)
    fds = [fd for _, fl in frames for fd in fl]
    dir_count = frames[0][0]["dir_count"]
    return fds[0], fds[1 : 1 + dir_count], fds, len(frames)


def rebuild(data_fd, dirfds):
    h = hashlib.sha256()
    size = 0
    files = 0
    for c in parse_stream(data_fd):
        if c[0] == "bytes":
            h.update(c[2])
            size += len(c[2])
            continue
        _, length, index, name = c
        f = os.open(name, os.O_RDONLY, dir_fd=dirfds[index])
        try:
            data = read_exact(f, length)
        finally:
            os.close(f)
        h.update(data)
        size += length
        files += 1
    return "sha256:" + h.hexdigest(), size, files


def layers_of(conn, handle, image):
    insp = call1(conn, "org.composefs.Oci.Inspect", {"handle": handle, "image": image})
    return insp, json.loads(insp["config"])["rootfs"]["diff_ids"]


def dummy_fd(i):
    return os.open("/dev/null", os.O_RDONLY) if i % 2 == 0 else os.memfd_create("dummy")


def put_layer(conn, handle, diff_id, stream_bytes_iter, dirfd, extra_dummies=2, fd_list=None, zerocopy=False, hang_up_after=None):
    """Sends [pipe, dummies…, dirfd, dummies…]; the stream's file indexes must point at the dirfd
    slot (index `extra_dummies`). Writes the stream from a thread while waiting for the reply."""
    r, w = os.pipe()
    dummies = [dummy_fd(i) for i in range(2 * extra_dummies)]
    if fd_list is None:
        fd_list = [r] + dummies[:extra_dummies] + [dirfd] + dummies[extra_dummies:]
    else:
        fd_list = [r if x == "pipe" else x for x in fd_list]
    conn.send({"method": "org.composefs.Oci.PutLayer", "parameters": {"handle": handle, "diff_id": diff_id, "zerocopy": zerocopy}}, fd_list)
    os.close(r)
    for d in dummies:
        os.close(d)

    def writer():
        sent = 0
        try:
            for b in stream_bytes_iter:
                if hang_up_after is not None and sent + len(b) > hang_up_after:
                    os.write(w, b[: max(0, hang_up_after - sent)])
                    os._exit(0)  # vanish mid-transfer: pipe and socket close with the process
                os.write(w, b)
                sent += len(b)
        except BrokenPipeError:
            pass
        finally:
            os.close(w)

    t = threading.Thread(target=writer)
    t.start()
    try:
        reply, rfds = conn.recv()
    finally:
        t.join()
    for fd in rfds:
        os.close(fd)
    if "error" in reply:
        raise VarlinkError(reply)
    return reply["parameters"]


def reencode(data_fd, slot, length_delta=0, index_override=None):
    """Re-emit a received stream with every file chunk pointing at `slot`."""
    for c in parse_stream(data_fd):
        if c[0] == "bytes":
            yield bytes([c[1]]) + struct.pack("<I", len(c[2])) + c[2]
        else:
            _, length, _index, name = c
            nb = name.encode()
            idx = slot if index_override is None else index_override
            yield bytes([FILE]) + struct.pack("<QII", length + length_delta, idx, len(nb)) + nb


def cmd_info(sock):
    c = Conn(sock)
    out = {
        "service": call1(c, "org.varlink.service.GetInfo"),
        "oci": call1(c, "org.composefs.Oci.GetInfo"),
        "description": call1(c, "org.varlink.service.GetInterfaceDescription", {"interface": "org.composefs.Oci"})["description"],
    }
    out["descriptions"] = {
        name: call1(c, "org.varlink.service.GetInterfaceDescription", {"interface": name})["description"]
        for name in out["service"]["interfaces"]
    }
    try:
        call1(c, "org.composefs.Oci.NoSuchMethod")
    except VarlinkError as e:
        out["unknown_method"] = e.reply
    try:
        call1(c, "org.composefs.Oci.Tag", {"handle": "x", "manifest_digest": 1, "name": "n"})
    except VarlinkError as e:
        out["bad_param"] = e.reply
    # No method here can switch the connection to another protocol.
    c.send({"method": "org.composefs.Oci.GetInfo", "parameters": {}, "upgrade": True})
    out["upgrade"], _ = c.recv()
    # A call that carries fds it does not need: the server closes them and answers.
    frames = c.call("org.composefs.Oci.GetInfo", {}, fds=[dummy_fd(0), dummy_fd(1)])
    out["with_stray_fds"] = frames[0][0]
    return out


def cmd_images(sock, repo):
    c = Conn(sock)
    h = open_repo(c, repo)
    out = {"images": call1(c, "org.composefs.Oci.ListImages", {"handle": h})["images"]}
    out["refs"] = call1(c, "org.composefs.Repository.ListImageRefs", {"handle": h})["images"]
    for img in out["images"]:
        erofs = call1(c, "org.composefs.Oci.Inspect", {"handle": h, "image": img["name"]})["composefs_erofs"]
        img["object_ids"] = call1(c, "org.composefs.Repository.ImageObjects", {"handle": h, "name": erofs})["object_ids"]
    try:
        call1(c, "org.composefs.Oci.ListImages", {"handle": h + 1000})
    except VarlinkError as e:
        out["bad_handle"] = e.reply
    return out


def cmd_getlayers(sock, repo, image):
    c = Conn(sock)
    h = open_repo(c, repo)
    _, diff_ids = layers_of(c, h, image)
    out = []
    for d in diff_ids:
        data_fd, dirfds, fds, nframes = get_layer(c, h, d)
        try:
            digest, size, files = rebuild(data_fd, dirfds)
        finally:
            for fd in fds:
                os.close(fd)
        out.append({"diff_id": d, "rebuilt": digest, "size": size, "files": files, "frames": nframes, "fds": len(fds), "dir_count": len(dirfds)})
    return {"layers": out}


def cmd_getlayers_hangup(sock, repo, image):
    """GetLayer on a connection of its own per layer, hung up as soon as the reply is in: the fds
    must still carry the whole stream (brief 5.2: the keepalive, not the connection, holds it)."""
    c = Conn(sock)
    h = open_repo(c, repo)
    _, diff_ids = layers_of(c, h, image)
    out = []
    for d in diff_ids:
        g = Conn(sock)
        hg = open_repo(g, repo)
        data_fd, dirfds, fds, _ = get_layer(g, hg, d)
        g.s.close()
        try:
            digest, size, _files = rebuild(data_fd, dirfds)
        finally:
            for fd in fds:
                os.close(fd)
        out.append({"diff_id": d, "rebuilt": digest, "size": size})
    return {"layers": out}


def cmd_close_during_put(sock, src, dst, image):
    """Connection A stores a layer in dst, its stream held back half-way; meanwhile connection B
    closes A's handle and runs a real Gc on dst. A's PutLayer must still succeed (the handle is
    released only when it ends), and B's Gc must wait for it."""
    a, b = Conn(sock), Conn(sock)
    hs, hd = open_repo(a, src), open_repo(a, dst)
    _, diff_ids = layers_of(a, hs, image)
    d = diff_ids[0]
    data_fd, dirfds, fds, _ = get_layer(a, hs, d)
    chunks = list(reencode(data_fd, 2))
    half = threading.Event()
    go = threading.Event()

    def held_back():
        for i, ch in enumerate(chunks):
            if i == len(chunks) // 2:
                half.set()
                go.wait()
            yield ch

    result = {}

    def putter():
        try:
            result["put"] = put_layer(a, hd, d, held_back(), dirfds[real_dir_slot(dirfds)])
        except VarlinkError as e:
            result["put_error"] = e.reply

    t = threading.Thread(target=putter)
    t.start()
    half.wait()
    result["close"] = call1(b, "org.composefs.Repository.CloseRepository", {"handle": hd})
    hb = open_repo(b, dst)
    b.send({"method": "org.composefs.Repository.Gc", "parameters": {"handle": hb, "dry_run": False, "roots": []}})
    time.sleep(0.3)
    go.set()
    t.join()
    reply, _ = b.recv()
    result["gc"] = reply.get("parameters") if "error" not in reply else reply
    for fd in fds:
        os.close(fd)
    return result


def cmd_connflood(sock, n):
    """Holds n idle connections, then asks GetInfo on one more: is it answered while the n stay
    (within a second), and once they have closed?"""
    idle = [Conn(sock) for _ in range(int(n))]
    extra = Conn(sock)
    extra.send({"method": "org.varlink.service.GetInfo", "parameters": {}})
    extra.s.settimeout(1.0)
    try:
        reply, _ = extra.recv()
        while_full = True
    except socket.timeout:
        reply, while_full = None, False
    for c in idle:
        c.s.close()
    if reply is None:
        extra.s.settimeout(30.0)
        reply, _ = extra.recv()
    return {"answered_while_full": while_full, "answered_after": "parameters" in reply}


def cmd_stalled_put(sock, repo, diff_id):
    """A PutLayer whose stream is held open and never written: returns the service's answer."""
    c = Conn(sock)
    h = open_repo(c, repo)
    r, w = os.pipe()
    root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    c.send({"method": "org.composefs.Oci.PutLayer", "parameters": {"handle": h, "diff_id": diff_id, "zerocopy": False}}, [r, root])
    os.close(r)
    os.close(root)
    c.s.settimeout(60.0)
    try:
        reply, _ = c.recv()
    finally:
        os.close(w)
    return reply


def cmd_transfer(sock, repo, image):
    """GetLayer for every layer, receiving the stream and fds without reading file contents:
    file-backed chunks are only checked to exist with their declared size (names, not bytes)."""
    c = Conn(sock)
    h = open_repo(c, repo)
    _, diff_ids = layers_of(c, h, image)
    out = []
    t0 = time.monotonic()
    for d in diff_ids:
        data_fd, dirfds, fds, _ = get_layer(c, h, d)
        file_bytes = inline_bytes = files = 0
        try:
            f = os.fdopen(os.dup(data_fd), "rb", buffering=1 << 20)
            with f:
                while True:
                    t = f.read(1)
                    if not t:
                        break
                    if t[0] in (META, INLINE):
                        (n,) = struct.unpack("<I", f.read(4))
                        if len(f.read(n)) != n:
                            raise EOFError("stream truncated")
                        inline_bytes += n
                    elif t[0] == FILE:
                        length, index, nlen = struct.unpack("<QII", f.read(16))
                        name = f.read(nlen).decode()
                        if os.stat(name, dir_fd=dirfds[index]).st_size != length:
                            raise ValueError("%s: size differs from the declared %d" % (name, length))
                        file_bytes += length
                        files += 1
                    else:
                        raise ValueError("unknown chunk type %d" % t[0])
        finally:
            for fd in fds:
                os.close(fd)
        out.append({"diff_id": d, "file_bytes": file_bytes, "inline_bytes": inline_bytes, "files": files})
    return {"layers": out, "seconds": time.monotonic() - t0}


def real_dir_slot(dirfds):
    for i, fd in enumerate(dirfds):
        if os.path.isdir("/proc/self/fd/%d" % fd):
            return i
    raise RuntimeError("no directory among the dir fds")


def cmd_copy(sock, src, dst, image, name):
    c = Conn(sock)
    hs, hd = open_repo(c, src), open_repo(c, dst)
    insp, diff_ids = layers_of(c, hs, image)
    results = []
    for d in diff_ids:
        data_fd, dirfds, fds, _ = get_layer(c, hs, d)
        try:
            # The real dir's position is found by looking, only to pick the fd to forward.
            objdir = dirfds[real_dir_slot(dirfds)]
            r = put_layer(c, hd, d, reencode(data_fd, 2), objdir)
        finally:
            for fd in fds:
                os.close(fd)
        results.append(r)
    layers = [{"diff_id": d, "layer_verity": r["layer_verity"]} for d, r in zip(diff_ids, results)]
    fin = call1(c, "org.composefs.Oci.FinalizeImage", {"handle": hd, "manifest_json": insp["manifest"], "config_json": insp["config"], "layers": layers, "name": name})
    return {"layers": results, "finalize": fin}


def cmd_bad(sock, src, dst, image, kind):
    """One misbehaviour (layer from src, sent to dst); returns the answer, or that it hung up."""
    c = Conn(sock)
    if kind == "garbage":
        c.s.sendall(b"{this is not json\0")
        return expect_hangup(c)
    if kind == "oversize":
        try:
            c.s.sendall(b'{"method":"' + b"x" * (9 << 20))
        except (BrokenPipeError, ConnectionResetError):
            return {"hangup": True}
        return expect_hangup(c)
    h = open_repo(c, src)
    hd = open_repo(c, dst)
    _, diff_ids = layers_of(c, h, image)
    d = diff_ids[0]
    if kind == "fdflood":
        # A PutLayer whose stream never ends, then calls piling up behind it with many fds each.
        r, w = os.pipe()
        root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        c.send({"method": "org.composefs.Oci.PutLayer", "parameters": {"handle": hd, "diff_id": d, "zerocopy": False}}, [r, root])
        os.close(r)
        os.close(root)
        try:
            for _ in range(4):
                dummies = [dummy_fd(i) for i in range(200)]
                c.send({"method": "org.composefs.Oci.GetInfo", "parameters": {}}, dummies)
                for fd in dummies:
                    os.close(fd)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            return expect_hangup(c)
        finally:
            os.close(w)
    if kind == "devnull-stream":
        root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        devnull = os.open("/dev/null", os.O_RDONLY)
        c.send({"method": "org.composefs.Oci.PutLayer", "parameters": {"handle": hd, "diff_id": d, "zerocopy": False}}, [devnull, root])
        os.close(devnull)
        os.close(root)
        reply, _ = c.recv()
        return {"error": reply if "error" in reply else None}
    if kind == "fdcount":
        try:
            put_layer(c, hd, d, iter([b""]), None, fd_list=["pipe"])
        except VarlinkError as e:
            return {"error": e.reply}
        return {"error": None}
    data_fd, dirfds, fds, _ = get_layer(c, h, d)
    objdir = dirfds[real_dir_slot(dirfds)]
    try:
        if kind == "index":
            gen = reencode(data_fd, 2, index_override=77)
        elif kind == "dummy-slot":
            gen = reencode(data_fd, 2, index_override=0)
        elif kind == "length":
            gen = reencode(data_fd, 2, length_delta=1)
        elif kind == "truncated-inline":
            gen = iter([bytes([INLINE]) + struct.pack("<I", 1000) + b"short"])
        elif kind == "escape":
            nb = b"../../../etc/passwd"
            gen = iter([bytes([FILE]) + struct.pack("<QII", 10, 2, len(nb)) + nb])
        elif kind == "wrong-diff-id":
            gen = reencode(data_fd, 2)
            d = "sha256:" + "0" * 64
        elif kind == "hangup":
            put_layer(c, hd, d, reencode(data_fd, 2), objdir, hang_up_after=700)
            return {"error": "not reached"}
        else:
            raise ValueError(kind)
        try:
            r = put_layer(c, hd, d, gen, objdir)
            return {"error": None, "reply": r}
        except VarlinkError as e:
            return {"error": e.reply}
    finally:
        for fd in fds:
            os.close(fd)


def expect_hangup(c):
    try:
        reply, _ = c.recv()
        return {"hangup": False, "reply": reply}
    except (EOFError, ConnectionResetError):
        return {"hangup": True}


def cmd_mount(sock, repo, image_id, path, overlay_dir=None):
    """Mount over varlink; read `path` through the returned detached mount fd (no attach needed)."""
    c = Conn(sock)
    h = open_repo(c, repo)
    opts, fds = {}, []
    if overlay_dir:
        opts = {"overlay": True, "read_write": True}
        for sub in ("upper", "work"):
            os.makedirs(os.path.join(overlay_dir, sub), exist_ok=True)
            fds.append(os.open(os.path.join(overlay_dir, sub), os.O_RDONLY | os.O_DIRECTORY))
    out = {}
    try:
        c.call("org.composefs.Repository.Mount", {"handle": h, "name": image_id, "options": {}}, fds=[dummy_fd(0)])
    except VarlinkError as e:
        out["wrong_fds"] = e.reply
    frames = c.call("org.composefs.Repository.Mount", {"handle": h, "name": image_id, "options": opts}, fds=fds)
    for fd in fds:
        os.close(fd)
    (params, rfds), = frames
    mnt = rfds[params["fd_index"]]
    # A mount fd is an O_PATH handle: open its root to list it.
    root = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=mnt)
    out["root"] = sorted(os.listdir(root))
    os.close(root)
    f = os.open(path, os.O_RDONLY, dir_fd=mnt)
    out["sha256"] = hashlib.sha256(read_all(f)).hexdigest()
    os.close(f)
    if overlay_dir:
        f = os.open("written-through-fd", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=mnt)
        os.write(f, b"hello")
        os.close(f)
    for fd in rfds:
        os.close(fd)
    try:
        call1(c, "org.composefs.Repository.Mount", {"handle": h, "name": "no-such-image", "options": {}})
    except VarlinkError as e:
        out["missing"] = e.reply
    return out


def cmd_mountbadwork(sock, repo, image_id, upper, work_file):
    """Mount with overlay whose workdir fd is a regular file: the error reply."""
    c = Conn(sock)
    h = open_repo(c, repo)
    fds = [os.open(upper, os.O_RDONLY | os.O_DIRECTORY), os.open(work_file, os.O_RDONLY)]
    try:
        c.call("org.composefs.Repository.Mount", {"handle": h, "name": image_id, "options": {"overlay": True}}, fds=fds)
        return {"error": None}
    except VarlinkError as e:
        return {"error": e.reply}
    finally:
        for fd in fds:
            os.close(fd)


def cmd_mountat(sock, repo, image_id, target):
    """Mount over varlink and attach the detached mount at `target` (move_mount), then let go of it."""
    import ctypes
    c = Conn(sock)
    h = open_repo(c, repo)
    (params, rfds), = c.call("org.composefs.Repository.Mount", {"handle": h, "name": image_id, "options": {}})
    mnt = rfds[params["fd_index"]]
    libc = ctypes.CDLL(None, use_errno=True)
    SYS_move_mount, AT_FDCWD, MOVE_MOUNT_F_EMPTY_PATH = 429, -100, 4  # x86_64
    if libc.syscall(SYS_move_mount, mnt, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH) != 0:
        raise OSError(ctypes.get_errno(), "move_mount")
    for fd in rfds:
        os.close(fd)
    return {"attached": target}


def cmd_pullhangup(sock, repo, image, name):
    """Starts a Pull that tags `name`, reads its first progress frame, and hangs up."""
    c = Conn(sock)
    h = open_repo(c, repo)
    c.send({"method": "org.composefs.Oci.Pull", "parameters": {"handle": h, "image": image, "name": name}, "more": True})
    first, _ = c.recv()
    c.close()
    return {"first": first}


def replies_until_eof(c):
    """Every reply on the connection until the server closes it."""
    out = []
    try:
        while True:
            reply, fds = c.recv()
            for fd in fds:
                os.close(fd)
            out.append(reply)
    except EOFError:
        return out


def cmd_halfclose(sock, repo, image, manifest_digest, name, image2, manifest2, name2):
    """Clients that stop writing (shutdown(SHUT_WR), as `printf … | socat` does) or leave right
    after their last call: pipelined calls are still answered, a Pull with `more` runs to its end,
    a oneway Tag sent just before close() still happens, and so do a oneway Pull of a bigger image
    and a oneway Tag of it, both sent just before close()."""
    a = Conn(sock)
    h = open_repo(a, repo)
    b = Conn(sock)
    b.s.sendall(json.dumps({"method": "org.varlink.service.GetInfo"}).encode() + b"\0"
                + json.dumps({"method": "org.composefs.Oci.ListImages", "parameters": {"handle": h}}).encode() + b"\0")
    b.s.shutdown(socket.SHUT_WR)
    pipelined = replies_until_eof(b)
    c = Conn(sock)
    c.send({"method": "org.composefs.Oci.Pull", "parameters": {"handle": h, "image": image}, "more": True})
    c.s.shutdown(socket.SHUT_WR)
    pulled = replies_until_eof(c)
    d = Conn(sock)
    d.send({"method": "org.composefs.Oci.Tag", "oneway": True, "parameters": {"handle": h, "manifest_digest": manifest_digest, "name": name}})
    d.close()
    e = Conn(sock)
    e.send({"method": "org.composefs.Oci.Pull", "oneway": True, "parameters": {"handle": h, "image": image2}})
    e.send({"method": "org.composefs.Oci.Tag", "oneway": True, "parameters": {"handle": h, "manifest_digest": manifest2, "name": name2}})
    e.close()
    names = []
    for _ in range(300):
        names = [i["name"] for i in call1(a, "org.composefs.Oci.ListImages", {"handle": h})["images"]]
        if name in names and name2 in names:
            break
        time.sleep(0.1)
    return {"pipelined": pipelined, "pulled": pulled, "names": sorted(names)}


def cmd_pull(sock, repo, image, name):
    """Pull with progress frames, then Fsck (full and metadata-only), Oci.Check and a dry-run Gc."""
    c = Conn(sock)
    h = open_repo(c, repo)
    frames = [p for p, _ in c.call("org.composefs.Oci.Pull", {"handle": h, "image": image, "name": name}, more=True)]
    return {
        "frames": frames,
        "fsck": call1(c, "org.composefs.Repository.Fsck", {"handle": h}),
        "fsck_metadata_only": call1(c, "org.composefs.Repository.Fsck", {"handle": h, "metadata_only": True}),
        "check": call1(c, "org.composefs.Oci.Check", {"handle": h}),
        "gc": call1(c, "org.composefs.Repository.Gc", {"handle": h, "dry_run": True, "roots": []}),
    }


def cmd_calls(sock, repo, calls):
    """Run a JSON list of [method, parameters, more?] on one connection with the repository's
    handle put in as "handle" (parameters that are not an object are sent as they are); each
    result is {"frames": [...]} or {"error": reply}."""
    c = Conn(sock)
    h = open_repo(c, repo)
    out = []
    for method, params, *more in json.loads(calls):
        try:
            frames = c.call(method, dict(params, handle=h) if isinstance(params, dict) else params, more=bool(more and more[0]))
            for _, fl in frames:
                for fd in fl:
                    os.close(fd)
            out.append({"frames": [p for p, _ in frames]})
        except VarlinkError as e:
            out.append({"error": e.reply})
    return out


def cmd_ocimount(sock, repo, image, path, bootable):
    """OciMount; list the root and hash `path` through the returned detached mount fd."""
    c = Conn(sock)
    h = open_repo(c, repo)
    frames = c.call("org.composefs.Oci.OciMount", {"handle": h, "image": image, "bootable": bootable == "bootable", "options": {}})
    (params, rfds), = frames
    mnt = rfds[params["fd_index"]]
    out = {"fds": len(rfds)}
    out["root"] = sorted(os.listdir("/proc/self/fd/%d" % mnt))
    out["boot"] = sorted(os.listdir("/proc/self/fd/%d/boot" % mnt)) if "boot" in out["root"] else None
    with open("/proc/self/fd/%d/%s" % (mnt, path), "rb") as f:
        out["sha256"] = hashlib.sha256(f.read()).hexdigest()
    for fd in rfds:
        os.close(fd)
    return out


def read_all(fd):
    out = bytearray()
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return bytes(out)
        out += b


COMMANDS = {"mount": cmd_mount, "mountat": cmd_mountat, "mountbadwork": cmd_mountbadwork, "pull": cmd_pull, "pullhangup": cmd_pullhangup, "info": cmd_info, "images": cmd_images, "getlayers": cmd_getlayers, "stalled-put": cmd_stalled_put, "connflood": cmd_connflood, "getlayers-hangup": cmd_getlayers_hangup, "close-during-put": cmd_close_during_put, "transfer": cmd_transfer, "copy": cmd_copy, "bad": cmd_bad, "calls": cmd_calls, "ocimount": cmd_ocimount, "halfclose": cmd_halfclose}

if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    json.dump(COMMANDS[cmd](*args), sys.stdout)
    sys.stdout.write("\n")
