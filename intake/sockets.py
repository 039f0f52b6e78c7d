"""relay-intake's listening sockets: the listen backlog, and one socket per worker process.

`bind_listeners` binds, for every `--interface`, one listening socket per worker process
(`--processes`), all on the same port with SO_REUSEPORT, so that the kernel shares the
connections out and each worker accepts on a socket of its own. It is called before the
workers are forked; a port that cannot be bound fails there, once.

How the kernel shares the connections out is decided by a small classic BPF program
attached to each group of sockets (SO_ATTACH_REUSEPORT_CBPF): a client's connections all
go to the worker chosen by its network (the IPv4 /24 or the IPv6 /64 it comes from), so
that each worker sees every connection of a client and of its network, and the
per-address and per-network limits and the AUTH failure counts stay exact per client; only
clients in the *spread* networks (loopback, and the networks given: the exempt clients
and the PROXY protocol's proxies, which carry many real clients) go to a random worker,
because one address would otherwise keep one worker busy and the other idle. Where the
program cannot be attached, the kernel's own hash of address and port is used (noted in
the log).

The backlog (`--listen-backlog`) defaults to the kernel's `net.core.somaxconn`, as
Postfix's master and most servers do; asyncio's default of 100 let a burst of 1,000
connecting clients overflow the accept queue, and a client whose handshake the kernel then
completed with a SYN cookie but could not queue waits for a greeting that never comes.
Reads /proc/sys/net/core/somaxconn; touches no other file.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import socket
import struct
from collections.abc import Sequence

SOMAXCONN_PATH = "/proc/sys/net/core/somaxconn"
SO_ATTACH_REUSEPORT_CBPF = 51
FALLBACK_BACKLOG = 4096

# Classic BPF (linux/filter.h): instruction classes, sizes, modes, operations.
_LD, _LDX, _ALU, _JMP, _RET, _MISC = 0x00, 0x01, 0x04, 0x05, 0x06, 0x07
_W, _B = 0x00, 0x10
_ABS, _K, _A = 0x20, 0x00, 0x10
_RSH, _AND, _MOD, _XOR = 0x70, 0x50, 0x90, 0xA0
_JEQ, _JA = 0x10, 0x00
_X = 0x08
_TAX = 0x00
_NET = -0x100000  # SKF_NET_OFF: offsets from the network (IP) header
_RANDOM = -0x1000 + 56  # SKF_AD_OFF + SKF_AD_RANDOM: a random 32-bit number


def default_backlog() -> int:
    """The kernel's net.core.somaxconn (4096 where it cannot be read)."""
    try:
        with open(SOMAXCONN_PATH, encoding="ascii") as handle:
            value = int(handle.read().strip())
    except (OSError, ValueError):
        return FALLBACK_BACKLOG
    return value if value > 0 else FALLBACK_BACKLOG


def _insn(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> tuple[int, int, int, int]:
    if not (0 <= jt <= 255 and 0 <= jf <= 255):
        raise ValueError("a jump of the steering program is too long (too many networks)")
    return code, jt, jf, k & 0xFFFFFFFF


def steering_program(workers: int, spread: Sequence[str]) -> list[tuple[int, int, int, int]]:
    """The BPF program: a worker index from the client's network, or random for *spread*.

    IPv4: the /24 of the source address, unless it is in one of the IPv4 networks of
    *spread* (then random). IPv6: the /64, unless the source is ::1 and a network of
    *spread* holds it (then random); other IPv6 networks in *spread* are steered by their
    /64 like any other address.
    """
    networks = []
    spread_loopback6 = False
    for text in spread:
        network = ipaddress.ip_network(text, strict=False)
        if isinstance(network, ipaddress.IPv4Network):
            networks.append((int(network.network_address), int(network.netmask)))
        elif ipaddress.IPv6Address(1) in network:
            spread_loopback6 = True
    program: list[tuple[int, int, int, int]] = []
    spread_jumps: list[int] = []  # indexes of jumps to patch to the random part

    def jump_to_spread(code: int, k: int) -> None:
        spread_jumps.append(len(program))
        program.append(_insn(code, k))

    program.append(_insn(_LD | _B | _ABS, _NET + 0))  # version and header length
    program.append(_insn(_ALU | _RSH | _K, 4))
    ipv6_check = len(program)
    program.append(_insn(_JMP | _JEQ | _K, 4))  # jt: IPv4 (next), jf: patched below
    for address, mask in networks:
        program.append(_insn(_LD | _W | _ABS, _NET + 12))
        program.append(_insn(_ALU | _AND | _K, mask))
        jump_to_spread(_JMP | _JEQ | _K, address)
    program.append(_insn(_LD | _W | _ABS, _NET + 12))
    program.append(_insn(_ALU | _RSH | _K, 8))
    program.append(_insn(_ALU | _MOD | _K, workers))
    program.append(_insn(_RET | _A))
    ipv6 = len(program)
    program[ipv6_check] = _insn(_JMP | _JEQ | _K, 4, 0, ipv6 - ipv6_check - 1)
    program.append(_insn(_JMP | _JEQ | _K, 6, 0, 0))  # A still holds the version
    not_ipv6 = len(program) - 1
    if spread_loopback6:
        loopback_words = len(program)
        for offset, word in ((8, 0), (12, 0), (16, 0)):
            program.append(_insn(_LD | _W | _ABS, _NET + offset))
            program.append(_insn(_JMP | _JEQ | _K, word, 0, 0))  # jf patched: not ::1
        program.append(_insn(_LD | _W | _ABS, _NET + 20))
        jump_to_spread(_JMP | _JEQ | _K, 1)
        steer_ipv6 = len(program)
        for index in range(loopback_words + 1, steer_ipv6 - 1, 2):
            code, _, _, k = program[index]
            program[index] = _insn(code, k, 0, steer_ipv6 - index - 1)
    program.append(_insn(_LD | _W | _ABS, _NET + 8))
    program.append(_insn(_MISC | _TAX))
    program.append(_insn(_LD | _W | _ABS, _NET + 12))
    program.append(_insn(_ALU | _XOR | _X))
    program.append(_insn(_ALU | _MOD | _K, workers))
    program.append(_insn(_RET | _A))
    random_part = len(program)
    code, _, _, k = program[not_ipv6]
    program[not_ipv6] = _insn(code, k, 0, random_part - not_ipv6 - 1)  # else: random too
    program.append(_insn(_LD | _W | _ABS, _RANDOM))
    program.append(_insn(_ALU | _MOD | _K, workers))
    program.append(_insn(_RET | _A))
    for index in spread_jumps:
        code, _, _, k = program[index]
        program[index] = _insn(code, k, random_part - index - 1, 0)
    return program


def attach_steering(sock: socket.socket, workers: int, spread: Sequence[str]) -> bool:
    """Attach the steering program to *sock*'s reuseport group; False if the kernel refused."""
    try:
        program = steering_program(workers, spread)
    except ValueError:
        return False
    raw = b"".join(struct.pack("HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(raw)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError:
        return False
    return True


def _family(interface: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in interface else socket.AF_INET


def bind_listeners(interfaces: Sequence[str], port: int, backlog: int, copies: int,
                   spread: Sequence[str] = ()) -> tuple[list[list[socket.socket]], bool]:
    """Listening sockets: [worker][interface], all of one interface on one port.

    With one copy no SO_REUSEPORT is set (a second relay-intake on the same port still
    fails to bind, as before). Port 0 takes a free port (the same for every copy of an
    interface). Returns the sockets and whether connections are steered by client network
    (False: the kernel's hash, or only one copy). OSError (the sockets made so far closed)
    when one cannot be bound.
    """
    made: list[socket.socket] = []
    by_worker: list[list[socket.socket]] = [[] for _ in range(copies)]
    steered = copies > 1
    try:
        for interface in interfaces:
            family = _family(interface)
            chosen = port
            for copy in range(copies):
                sock = socket.socket(family, socket.SOCK_STREAM)
                made.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if copies > 1:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind((interface, chosen))
                except OSError as error:
                    raise OSError(error.errno, f"cannot listen on {interface} port {chosen}:"
                                  f" {error.strerror or error}") from None
                chosen = sock.getsockname()[1]
                sock.listen(backlog)
                sock.setblocking(False)
                if copy == 0 and copies > 1:
                    steered = attach_steering(sock, copies, spread) and steered
                by_worker[copy].append(sock)
    except BaseException:
        for sock in made:
            with contextlib.suppress(OSError):
                sock.close()
        raise
    return by_worker, steered
