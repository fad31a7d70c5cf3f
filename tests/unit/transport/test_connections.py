"""Finding and shutting down one connection by its gRPC peer string (transport/connections):
peer strings, /proc/net/tcp addresses, and a real loopback connection cut from the side that
accepted it."""

from __future__ import annotations

import socket

from p2pagent.transport import connections

# /proc/net/tcp and tcp6 lines as the kernel writes them: 127.0.0.1:40000 <- 127.0.0.1:8080,
# and [::ffff:127.0.0.1]:40001 (an IPv4 client on a dual-stack socket).
_HEAD = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
_REST = " 01 00000000:00000000 00:00000000 00000000     0        0 "
TCP = _HEAD + "   0: 0100007F:1F90 0100007F:9C40" + _REST + "111 1\n"
_V4_IN_V6 = "0000000000000000FFFF00000100007F"
TCP6 = _HEAD + f"   0: {_V4_IN_V6}:1F90 {_V4_IN_V6}:9C41" + _REST + "222 1\n"


def test_peer_strings() -> None:
    assert connections.parse_peer("ipv4:127.0.0.1:40000") == ("127.0.0.1", 40000)
    assert connections.parse_peer("ipv6:[::1]:5") == ("::1", 5)
    assert connections.parse_peer("unix:/tmp/x") is None
    assert connections.parse_peer("ipv4:nonsense:1") is None


def test_proc_tables_are_matched_by_remote_address() -> None:
    tables = {"tcp": TCP, "tcp6": TCP6}
    assert connections.socket_inodes(("127.0.0.1", 40000), tables) == {"111"}
    assert connections.socket_inodes(("127.0.0.1", 40001), tables) == {"222"}
    assert connections.socket_inodes(("127.0.0.1", 40002), tables) == set()


def test_a_real_connection_is_shut_down_from_the_accepting_side() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        try:
            host, port = client.getsockname()
            assert connections.cut(f"ipv4:{host}:{port}")
            client.settimeout(10)
            assert client.recv(1) == b""  # the client sees the connection end
            accepted.settimeout(10)
            assert accepted.recv(1) == b""  # grpc's side: reads end too
        finally:
            client.close()
            accepted.close()
    assert not connections.cut("ipv4:127.0.0.1:1")
