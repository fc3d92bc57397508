"""How a peer's address is recorded (``CallerContext.address``) and read back."""

from __future__ import annotations

import pytest

from pacs.context import CallerContext, host_of, host_port


@pytest.mark.parametrize(
    ("host", "port", "address"),
    [
        ("127.0.0.1", 40000, "127.0.0.1:40000"),
        ("scanner.lab.example", 104, "scanner.lab.example:104"),
        ("::1", 40000, "[::1]:40000"),
        ("fe80::1%eth0", 11112, "[fe80::1%eth0]:11112"),
    ],
)
def test_an_ipv6_address_is_bracketed_so_host_and_port_stay_apart(host: str, port: int, address: str) -> None:
    assert host_port(host, port) == address
    assert host_of(address) == host
    assert CallerContext(via="c-store", ae_title="DR_1", address=address).describe() == f"DR_1@{address}"
