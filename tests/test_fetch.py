"""Safe URL fetching: no SSRF to loopback, private or metadata addresses, even via redirects."""

from __future__ import annotations

import ipaddress

import pytest

from pizzactl.errors import BadInputError, FetchError, PayloadTooLargeError, UnsafeURLError, UnsupportedMediaError
from pizzactl.serving.fetch import FetchPolicy, address_problem, check_url, fetch_image

LOCAL = FetchPolicy(allow_private=True, read_timeout=1.0, total_timeout=5.0)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "169.254.1.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "100.64.0.1",
        "100.100.100.200",
        "192.0.0.192",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fd00:ec2::254",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::",  # 6to4 wrapping 127.0.0.1
    ],
)
def test_non_public_addresses_are_refused(address):
    assert address_problem(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "151.101.1.69", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address):
    assert address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.5", "192.168.0.10", "::1", "fd12::1"])
def test_allow_private_lets_loopback_and_private_through(address):
    assert address_problem(ipaddress.ip_address(address), allow_private=True) is None


@pytest.mark.parametrize("address", ["169.254.169.254", "fd00:ec2::254", "100.100.100.200", "224.0.0.1", "0.0.0.0"])
def test_metadata_link_local_and_multicast_stay_refused_with_allow_private(address):
    assert address_problem(ipaddress.ip_address(address), allow_private=True) is not None


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.jpg", "gopher://x/", "javascript:alert(1)", "/relative.jpg"]
)
def test_only_http_and_https_urls(url):
    with pytest.raises(BadInputError):
        check_url(url)


@pytest.mark.parametrize("url", ["", "   ", "http://", "http://[::1"])
def test_malformed_urls_are_bad_requests(url):
    with pytest.raises(BadInputError) as info:
        check_url(url)
    assert info.value.http_status == 400


async def test_loopback_urls_are_refused_by_default(photo_server):
    with pytest.raises(UnsafeURLError) as info:
        await fetch_image(photo_server.url + "/pizza.jpg")
    assert "loopback" in info.value.message
    assert "--allow-private-urls" in info.value.hint


async def test_the_blocking_fetch_applies_the_same_policy_even_inside_a_running_event_loop(photo_server):
    """explain.py (and any notebook) calls it from synchronous code, possibly with a loop running."""
    from pizzactl.serving.fetch import fetch_image_blocking

    expected = (photo_server.root / "pizza.jpg").read_bytes()
    photo_server.redirects["/blocking-hop"] = "/pizza.jpg"
    assert fetch_image_blocking(photo_server.url + "/blocking-hop", LOCAL) == expected
    photo_server.redirects["/blocking-to-metadata"] = "http://169.254.169.254/latest/meta-data/"
    with pytest.raises(UnsafeURLError):
        fetch_image_blocking(photo_server.url + "/blocking-to-metadata", LOCAL)
    with pytest.raises(UnsafeURLError):
        fetch_image_blocking(photo_server.url + "/pizza.jpg")


async def test_host_names_are_resolved_and_checked(photo_server):
    port = photo_server.url.rsplit(":", 1)[1]
    with pytest.raises(UnsafeURLError):
        await fetch_image(f"http://localhost:{port}/pizza.jpg")


async def test_allow_private_fetches_local_images_by_name_and_by_ip(photo_server):
    expected = (photo_server.root / "pizza.jpg").read_bytes()
    assert await fetch_image(photo_server.url + "/pizza.jpg", LOCAL) == expected
    port = photo_server.url.rsplit(":", 1)[1]
    assert await fetch_image(f"http://localhost:{port}/pizza.jpg", LOCAL) == expected


async def test_redirects_are_followed_and_each_hop_is_checked(photo_server):
    photo_server.redirects["/hop"] = "/pizza.jpg"
    photo_server.redirects["/to-metadata"] = "http://169.254.169.254/latest/meta-data/"
    photo_server.redirects["/to-file"] = "file:///etc/passwd"
    assert await fetch_image(photo_server.url + "/hop", LOCAL) == (photo_server.root / "pizza.jpg").read_bytes()
    with pytest.raises(UnsafeURLError) as info:
        await fetch_image(photo_server.url + "/to-metadata", LOCAL)
    assert "metadata" in info.value.message
    with pytest.raises(UnsafeURLError):
        await fetch_image(photo_server.url + "/to-file", LOCAL)


async def test_ipv4_mapped_ipv6_loopback_is_refused(photo_server):
    port = photo_server.url.rsplit(":", 1)[1]
    with pytest.raises(UnsafeURLError):
        await fetch_image(f"http://[::ffff:127.0.0.1]:{port}/pizza.jpg")


async def test_more_than_three_redirects_fail(photo_server):
    for i in range(5):
        photo_server.redirects[f"/loop{i}"] = f"/loop{i + 1}"
    photo_server.redirects["/loop5"] = "/pizza.jpg"
    with pytest.raises(FetchError) as info:
        await fetch_image(photo_server.url + "/loop0", LOCAL)
    assert "redirects" in info.value.message
    photo_server.redirects["/ok0"] = "/loop3"  # /loop3 -> /loop4 -> /loop5 -> /pizza.jpg = 3 more hops
    with pytest.raises(FetchError):
        await fetch_image(photo_server.url + "/ok0", LOCAL)  # 4 redirects in all
    assert await fetch_image(photo_server.url + "/loop3", LOCAL)  # exactly 3


async def test_a_page_that_is_not_an_image_is_415(photo_server):
    with pytest.raises(UnsupportedMediaError) as info:
        await fetch_image(photo_server.url + "/page.html", LOCAL)
    assert info.value.http_status == 415


async def test_the_body_is_capped_while_streaming(photo_server):
    with pytest.raises(PayloadTooLargeError) as info:
        await fetch_image(photo_server.url + "/big.jpg", FetchPolicy(allow_private=True, max_bytes=1_000_000))
    assert info.value.http_status == 413


async def test_a_declared_content_length_over_the_cap_is_refused_before_reading(photo_server):
    with pytest.raises(PayloadTooLargeError):
        await fetch_image(photo_server.url + "/pizza.jpg", FetchPolicy(allow_private=True, max_bytes=1000))


async def test_http_errors_and_slow_servers_are_fetch_errors(photo_server):
    with pytest.raises(FetchError) as info:
        await fetch_image(photo_server.url + "/missing.jpg", LOCAL)
    assert "404" in info.value.message
    assert info.value.http_status == 422
    with pytest.raises(FetchError) as info:
        await fetch_image(
            photo_server.url + "/slow.jpg", FetchPolicy(allow_private=True, read_timeout=0.3, total_timeout=2)
        )
    assert "timed out" in info.value.message or "longer" in info.value.message


async def test_a_closed_port_is_a_fetch_error(photo_server):
    from support.processes import free_port

    with pytest.raises(FetchError):
        await fetch_image(f"http://127.0.0.1:{free_port()}/x.jpg", LOCAL)


@pytest.fixture(scope="module")
def https_photo_server(tmp_path_factory, synthetic_photos):
    """An HTTPS server on 127.0.0.1 with a self-signed certificate for the name 'localhost'."""
    import http.server
    import shutil
    import ssl
    import subprocess
    import threading

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    shutil.copy(synthetic_photos.photos["pizza"][0], root / "pizza.jpg")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.server_address[1], cert, root
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_https_connects_to_the_checked_ip_but_verifies_the_certificate_for_the_name(https_photo_server):
    import ssl

    from pizzactl.serving.fetch import new_session

    port, cert, root = https_photo_server
    trusting = ssl.create_default_context(cafile=str(cert))
    async with new_session(LOCAL, trusting) as session:
        # the connection goes to 127.0.0.1 (the resolved, checked address) and TLS still checks "localhost"
        data = await fetch_image(f"https://localhost:{port}/pizza.jpg", LOCAL, session)
        assert data == (root / "pizza.jpg").read_bytes()
        with pytest.raises(FetchError):  # the certificate is not valid for the bare IP: verification is on
            await fetch_image(f"https://127.0.0.1:{port}/pizza.jpg", LOCAL, session)


async def test_the_resolver_hook_hands_aiohttp_only_the_checked_address():
    """DNS rebinding: the connector connects to what `resolve` returns, and that is the one
    address that was checked (the name stays for Host and TLS), resolved afresh for each hop."""
    import aiohttp

    from pizzactl.serving.fetch import PinnedResolver, new_session

    answers = await PinnedResolver(allow_private=True).resolve("localhost", 8080)
    assert len(answers) == 1
    assert answers[0]["hostname"] == "localhost" and answers[0]["port"] == 8080
    assert address_problem(ipaddress.ip_address(answers[0]["host"]), allow_private=True) is None
    with pytest.raises(UnsafeURLError):
        await PinnedResolver().resolve("localhost", 8080)
    async with new_session(FetchPolicy()) as session:
        connector = session.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        assert not connector.use_dns_cache and connector.force_close  # no answer or connection is reused
