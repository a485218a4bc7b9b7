"""Service base URLs: validation (https only, plain http for loopback) and joining.

Credentials travel in headers, so a base URL must use https -- except on the loopback interface
(``127.0.0.0/8``, ``::1``, ``localhost``), where the sandboxes and local proxies listen on plain http.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` is a loopback address or the name ``localhost``.

    :param host: a host name or IP literal (IPv6 with or without brackets); ``None`` gives False.
    """
    if not host:
        return False
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def validate_base_url(url: str, *, field: str = "host", conn_id: str | None = None) -> str:
    """Check a service base URL and return it normalised (lower-case scheme, a trailing ``/``).

    :param url: the URL from the connection.
    :param field: the connection field it came from, named in the error (e.g. ``"host"``).
    :param conn_id: the connection id, named in the error when given.
    :raises ValueError: when the URL is not absolute http(s), carries user:password, has a query or
        fragment, or uses plain http for a host that is not loopback. The message names the field and shows
        only the scheme and host, never the rest of the URL.
    """
    where = f"connection {conn_id!r} field {field!r}" if conn_id else f"field {field!r}"
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ValueError(f"{where}: not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        raise ValueError(f"{where}: expected an absolute https:// URL, got scheme {scheme or 'none'!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{where}: the URL must not contain credentials (user:password@); use the fields")
    if parts.query or parts.fragment:
        raise ValueError(f"{where}: the URL must not have a query string or fragment")
    if scheme == "http" and not is_loopback_host(host):
        raise ValueError(
            f"{where}: plain http is allowed only for loopback hosts; use https:// for host {host!r}"
        )
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def join_url(base: str, *parts: str) -> str:
    """Append path segments to a base URL, with exactly one ``/`` between pieces.

    ``join_url("https://api.clarify.io/v1/", "rpc")`` gives ``https://api.clarify.io/v1/rpc``. Unlike
    :func:`urllib.parse.urljoin`, a base without a trailing slash keeps its last segment.

    :param base: the base URL.
    :param parts: path segments; leading and trailing slashes are trimmed, empty segments skipped.
    """
    url = base.rstrip("/")
    for part in parts:
        segment = part.strip("/")
        if segment:
            url += "/" + segment
    return url


def strip_query(url: str) -> str:
    """The URL without query string and fragment (e.g. a pre-signed URL without its signature).

    :param url: any URL.
    """
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def split_conn_id(uri: str) -> tuple[str, str | None]:
    """Split an Airflow object storage URI into the URI without its connection id, and that id.

    ``ObjectStoragePath`` writes a connection id as the URI's user info (``s3://aws_default@bucket/key``).
    Airflow 3.1 and 3.3 disagree on whether that or a ``conn_id=`` argument wins (and 3.1 drops it when
    ``conn_id=None`` is passed), so callers split it off and pass exactly one connection id.

    :param uri: the URI (or a plain path, returned as it is).
    :return: ``(URI without user info, connection id or None)``.
    """
    parts = urlsplit(uri)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return uri, None
    return parts._replace(netloc=host).geturl(), userinfo or None
