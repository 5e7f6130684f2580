"""Run a command under the confinement systemd/gateway.service asks for, without systemd.

    python -m tests.support.sandbox UNIT_FILE -- gateway run --config ...

This machine does not boot with systemd, so ``systemctl start`` cannot run the unit. This launcher
applies, to itself and then exec()s the command, what the unit's settings mean at the kernel level,
read from the unit file itself (so a test exercises the unit as written):

    SystemCallFilter=, SystemCallErrorNumber=   one seccomp allow-list (libseccomp through ctypes), the
                                                groups expanded by this machine's `systemd-analyze
                                                syscall-filter`, as systemd expands them
    SystemCallArchitectures=native              the filter only allows the native ABI
    RestrictAddressFamilies=                    socket() only for the listed families
    MemoryDenyWriteExecute=                     systemd 252's seccomp rules (no W+X mmap, no mprotect or
                                                pkey_mprotect adding PROT_EXEC, no shmat SHM_EXEC) and
                                                the kernel's PR_SET_MDWE where it exists (Linux 6.3+)
    CapabilityBoundingSet=, NoNewPrivileges=    the bounding set reduced to the listed capabilities
    ProcSubset=pid, ProtectProc=invisible       a private /proc mounted subset=pid,hidepid=invisible
    ProtectSystem=strict                        every mount read-only except the paths after --rw
    PrivateDevices=                             a /dev holding only null, zero, full, random, urandom, tty

    User=, AmbientCapabilities=                 with --user UID:GID, setpriv(1) switches to that user
                                                keeping only the ambient capabilities
    ProtectHome=true                            /root and /home empty (this machine's Python prefix
                                                under /root stays visible: it is the interpreter)

Not applied (they need systemd or a cgroup): DevicePolicy=,
PrivateTmp=, RemoveIPC=, PrivateMounts= (the mount namespace here is private anyway), ProtectKernel*=,
ProtectClock=, ProtectHostname=, RestrictNamespaces=, RestrictRealtime=, LockPersonality=, UMask=.
Refused system calls fail with EPERM as under the unit; to see which were refused, run the whole
command under `strace -f -o FILE` and look for EPERM.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

# libseccomp's ABI (seccomp.h).
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
CAPABILITIES = {"CAP_NET_BIND_SERVICE": 10}
LAST_CAP = int(Path("/proc/sys/kernel/cap_last_cap").read_text()) if Path("/proc/sys/kernel/cap_last_cap").exists() else 40
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def syscall_groups() -> dict[str, list[str]]:
    """Every @group and its members (names and @groups), as this machine's systemd defines them."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    found: set[str] = set()
    for name in names:
        found |= expand(groups[name], groups) if name.startswith("@") else {name}
    return found


def allowed_syscalls(settings: dict[str, list[str]]) -> set[str]:
    """SystemCallFilter= lines: the first an allow-list (plus @default, as systemd adds), then ~deny lists."""
    groups = syscall_groups()
    allowed: set[str] | None = None
    for line in settings.get("SystemCallFilter", []):
        deny = line.startswith("~")
        names = line.lstrip("~").split()
        if allowed is None:
            if deny:
                raise SystemExit("sandbox: a deny-list first is not what the unit does; not emulated")
            allowed = expand(names + ["@default"], groups)
        elif deny:
            allowed -= expand(names, groups)
        else:
            allowed |= expand(names, groups)
    if allowed is None:
        raise SystemExit("sandbox: the unit has no SystemCallFilter=")
    return allowed


def seccomp(settings: dict[str, list[str]]) -> None:
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    error = getattr(errno, settings.get("SystemCallErrorNumber", ["EPERM"])[0])
    ctx = lib.seccomp_init(0x00050000 | error)  # SCMP_ACT_ERRNO(error); other ABIs: killed (native only)

    def rule(name: str, *conditions: tuple[int, int, int, int]) -> None:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            return  # not a system call on this architecture
        array = (ArgCmp * max(len(conditions), 1))(*(ArgCmp(*c) for c in conditions))
        rc = lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, len(conditions), array)
        if rc < 0:
            raise SystemExit(f"sandbox: seccomp rule for {name}: {os.strerror(-rc)}")

    special = set()
    families = settings.get("RestrictAddressFamilies", [""])[0].split()
    if families:
        special.add("socket")
        for family in families:
            rule("socket", (0, SCMP_CMP_EQ, int(getattr(socket, family)), 0))
    if settings.get("MemoryDenyWriteExecute", ["false"])[0] in ("true", "yes", "1"):
        special |= {"mmap", "mprotect", "pkey_mprotect", "shmat"}
        wx = PROT_WRITE | PROT_EXEC
        for prot in (0, PROT_WRITE, PROT_EXEC):  # anything but both
            rule("mmap", (2, SCMP_CMP_MASKED_EQ, wx, prot))
        rule("mprotect", (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, 0))
        rule("pkey_mprotect", (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, 0))
        rule("shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, 0))
    for name in sorted(allowed_syscalls(settings) - special):
        rule(name)
    if lib.seccomp_load(ctx) < 0:
        raise SystemExit(f"sandbox: seccomp_load: {os.strerror(ctypes.get_errno())}")


def mounts(settings: dict[str, list[str]], writable: list[str]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

    def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        if libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                      data.encode() if data else None) != 0:
            raise SystemExit(f"sandbox: mount {target}: {os.strerror(ctypes.get_errno())}")

    if libc.unshare(CLONE_NEWNS) != 0:
        raise SystemExit(f"sandbox: unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}")
    mount("none", "/", None, MS_REC | MS_PRIVATE)
    if settings.get("PrivateDevices") == ["true"]:
        # The host's /dev stays reachable at a temporary point until the chosen nodes are bound.
        host_dev = tempfile.mkdtemp(prefix="sandbox-dev-")
        mount("/dev", host_dev, None, MS_BIND | MS_REC)
        mount("tmpfs", "/dev", "tmpfs", 0, "mode=0755,size=64k")
        for name in DEVICES:
            Path(f"/dev/{name}").touch()
            mount(f"{host_dev}/{name}", f"/dev/{name}", None, MS_BIND)
        libc.umount2(host_dev.encode(), MNT_DETACH)
        os.rmdir(host_dev)
    if settings.get("ProtectHome") == ["true"]:
        # Homes become empty. This machine's Python lives under /root (pyenv): its prefix stays
        # visible, read-only below, or nothing could run; under the real unit it is in /usr or /opt.
        keep = [p for p in {sys.base_prefix, os.path.realpath(sys.executable).rsplit("/bin/", 1)[0]} if p.startswith("/root/")]
        for home in ("/root", "/home"):
            if not os.path.isdir(home):
                continue
            real = tempfile.mkdtemp(prefix="sandbox-home-")
            mount(home, real, None, MS_BIND | MS_REC)
            mount("tmpfs", home, "tmpfs", 0, "mode=0755,size=64k")
            for path in keep:
                if path.startswith(home + "/"):
                    os.makedirs(path, exist_ok=True)
                    mount(real + path[len(home):], path, None, MS_BIND | MS_REC)
            libc.umount2(real.encode(), MNT_DETACH)
            os.rmdir(real)
    if settings.get("ProtectSystem") == ["strict"]:
        # Writable paths first (bound onto themselves), then every mount read-only, then them again rw.
        points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for path in writable:
            mount(path, path, None, MS_BIND | MS_REC)
        for point in points:
            if point.startswith(("/proc", "/sys", "/dev")):
                continue
            if libc.mount(b"none", point.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY, None) != 0:
                print(f"sandbox: {point} stays writable: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        for path in writable:
            mount("none", path, None, MS_REMOUNT | MS_BIND)
    if settings.get("ProcSubset") == ["pid"] or settings.get("ProtectProc") == ["invisible"]:
        options = ",".join(filter(None, ["subset=pid" if settings.get("ProcSubset") == ["pid"] else "",
                                         "hidepid=invisible" if settings.get("ProtectProc") == ["invisible"] else ""]))
        mount("proc", "/proc", "proc", 0, options)


def capabilities(settings: dict[str, list[str]]) -> None:
    keep = {CAPABILITIES[c] for c in " ".join(settings.get("CapabilityBoundingSet", [])).split()}
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(LAST_CAP + 1):
        if cap not in keep and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise SystemExit(f"sandbox: cannot drop capability {cap}: {os.strerror(ctypes.get_errno())}")
    if settings.get("NoNewPrivileges") == ["true"] and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SystemExit("sandbox: PR_SET_NO_NEW_PRIVS failed")
    mdwe(settings)


def mdwe(settings: dict[str, list[str]]) -> None:
    if settings.get("MemoryDenyWriteExecute", ["false"])[0] in ("true", "yes", "1"):
        ctypes.CDLL(None).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0)  # absent before Linux 6.3: seccomp still applies


def become(settings: dict[str, list[str]], user: str, unit: Path, command: list[str]) -> None:
    """User= and AmbientCapabilities= as systemd applies them, by setpriv(1); then this module again
    (as that user) for the system call filter, which would refuse setpriv's own calls."""
    uid, _, gid = user.partition(":")
    caps = ",".join(["-all"] + [f"+{c.lower().removeprefix('cap_')}" for c in " ".join(settings.get("CapabilityBoundingSet", [])).split()])
    ambient = ",".join(["-all"] + [f"+{c.lower().removeprefix('cap_')}" for c in " ".join(settings.get("AmbientCapabilities", [])).split()])
    setpriv = ["setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups", f"--bounding-set={caps}",
               f"--inh-caps={ambient}", f"--ambient-caps={ambient}"]
    if settings.get("NoNewPrivileges") == ["true"]:
        setpriv.append("--no-new-privs")
    os.execvp("setpriv", [*setpriv, "--", sys.executable, "-m", "tests.support.sandbox", str(unit), "--filter-only", "--", *command])


def main(argv: list[str]) -> None:
    unit = Path(argv[0])
    rest = argv[1:]
    writable: list[str] = []
    user = None
    filter_only = False
    while rest and rest[0] in ("--rw", "--user", "--filter-only"):
        if rest[0] == "--filter-only":
            filter_only, rest = True, rest[1:]
            continue
        if rest[0] == "--rw":
            writable.append(rest[1])
        else:
            user = rest[1]
        rest = rest[2:]
    if not rest or rest[0] != "--":
        raise SystemExit("usage: python -m tests.support.sandbox UNIT [--rw PATH]... [--user UID[:GID]] -- COMMAND...")
    command = rest[1:]
    settings = unit_settings(unit)
    if not filter_only:
        mounts(settings, writable)
        if user is not None:
            become(settings, user, unit, command)
        capabilities(settings)
    else:
        mdwe(settings)
    seccomp(settings)  # last: from here on only the unit's system calls
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
