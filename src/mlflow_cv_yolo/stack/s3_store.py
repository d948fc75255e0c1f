"""An S3 server whose objects survive it: moto's S3 API, with every object written
through to a data folder (DATA/<bucket>/<key>) before the request that stored it
is answered, and loaded back at start. A kill -9 loses nothing acknowledged.

    python -m mlflow_cv_yolo.stack.s3_store server DATA --address 127.0.0.1:PORT
    python3 s3_store.py server /data           # the CI image: MinIO's command line

It speaks MinIO's command line and health endpoint (/minio/health/live), so
testcontainers' MinioContainer runs it unchanged, and it imports nothing from its
package (the CI image copies this one file). moto ignores credentials. Kept per
object: its bytes; not its metadata or content type.

Keys must map to files, as with MinIO: no empty, "." or ".." path segment, no
object below another object; such uploads are refused with an S3 error.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import signal
import sys
import threading
import xml.etree.ElementTree as ET
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import boto3
from botocore.config import Config
from moto.moto_server.werkzeug_app import create_backend_app
from werkzeug.serving import make_server

INCOMING = ".incoming"  # temp files; bucket names cannot start with a dot
HEALTH = "/minio/health/"


def _error(start_response, status: str, code: str, message: str) -> list[bytes]:
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
    ).encode()
    start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body]


class Store:
    """The data folder: one file per object, replaced atomically (temp + rename)."""

    def __init__(self, data: Path):
        self.data = data
        self.incoming = data / INCOMING
        # Writes of one key are serialised, so the file ends as moto's last version.
        self._locks = [threading.Lock() for _ in range(64)]

    def lock(self, bucket: str, key: str) -> threading.Lock:
        return self._locks[zlib.crc32(f"{bucket}/{key}".encode()) % len(self._locks)]

    def path(self, bucket: str, key: str) -> Path | None:
        """Where `key` lives, or None when it cannot be a file there."""
        parts = key.split("/")
        if not bucket or bucket.startswith(".") or any(p in ("", ".", "..") for p in parts):
            return None
        return self.data.joinpath(bucket, *parts)

    def conflict(self, bucket: str, key: str) -> str | None:
        """Why `key` cannot be stored as a file, or None."""
        target = self.path(bucket, key)
        if target is None:
            return f"key {key!r} has an empty, '.' or '..' path segment"
        if target.is_dir():
            return f"key {key!r} is a prefix of other objects"
        for parent in target.relative_to(self.data / bucket).parents:
            if (self.data / bucket / parent).is_file():
                return f"key {key!r} lies below the object {parent.as_posix()!r}"
        return None

    def write(self, bucket: str, key: str, body) -> None:
        target = self.path(bucket, key)
        self.incoming.mkdir(parents=True, exist_ok=True)
        tmp = self.incoming / f"{threading.get_ident()}-{os.urandom(4).hex()}"
        try:
            with open(tmp, "wb") as f:
                shutil.copyfileobj(body, f, 1 << 20)
                f.flush()
                os.fsync(f.fileno())
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, bucket: str, key: str) -> None:
        target = self.path(bucket, key)
        if target is None:
            return
        target.unlink(missing_ok=True)
        for parent in target.parents:  # empty folders would restore as nothing anyway
            if parent == self.data / bucket:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def objects(self) -> list[tuple[str, str, Path]]:
        found = []
        for bucket in sorted(p for p in self.data.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found += [(bucket.name, f.relative_to(bucket).as_posix(), f) for f in bucket.rglob("*") if f.is_file()]
        return found


class WriteThrough:
    """WSGI middleware in front of moto: a successful write is mirrored into the
    store before its answer leaves, and a failed mirror answers 500 (the client
    retries) instead of acknowledging what would be lost."""

    def __init__(self, moto, store: Store, client):
        self.moto, self.store, self.client = moto, store, client

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith(HEALTH):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]
        method = environ["REQUEST_METHOD"]
        # RAW_URI: the path as sent, percent-encoded (PATH_INFO is decoded as latin-1).
        raw = urlsplit(environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", ""))
        bucket, _, key = unquote(raw.path).lstrip("/").partition("/")
        query = parse_qs(raw.query, keep_blank_values=True)
        writes = key and (method == "PUT" and "partNumber" not in query or method == "POST" and "uploadId" in query)
        if writes and (why := self.store.conflict(bucket, key)):
            return _error(start_response, "400 Bad Request", "XMinioInvalidObjectName", why)
        if not (writes or method in ("PUT", "DELETE", "POST")):
            return self.moto(environ, start_response)
        request = b""
        if method == "POST" and not key and "delete" in query:  # DeleteObjects: the keys are in the body
            request = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = io.BytesIO(request)
        with self.store.lock(bucket, key):
            answer = {}

            def capture(status, headers, exc_info=None):
                answer.update(status=status, headers=headers)
                return lambda data: None  # moto returns its body; nothing writes

            body = b"".join(self.moto(environ, capture))
            if answer["status"].startswith("2"):
                try:
                    self.mirror(method, bucket, key, query, request, writes)
                except Exception as exc:
                    print(
                        f"s3_store: could not write {bucket}/{key} through to {self.store.data}: {exc}",
                        file=sys.stderr,
                        flush=True,
                    )
                    return _error(
                        start_response,
                        "500 Internal Server Error",
                        "InternalError",
                        "the object could not be written to disk",
                    )
        start_response(answer["status"], answer["headers"])
        return [body]

    def mirror(self, method: str, bucket: str, key: str, query: dict, request: bytes, writes: bool) -> None:
        if writes:
            self.store.write(bucket, key, self.client.get_object(Bucket=bucket, Key=key)["Body"])
        elif method == "DELETE" and key and "uploadId" not in query:
            self.store.delete(bucket, key)
        elif request:
            # The request names the keys; a quiet answer lists only failures, so ask
            # moto which ones are gone.
            for element in ET.fromstring(request).iter():
                if element.tag.endswith("Key") and element.text and not self._exists(bucket, element.text):
                    self.store.delete(bucket, element.text)
        elif method == "PUT" and not key and bucket and not query:
            (self.store.data / bucket).mkdir(parents=True, exist_ok=True)
        elif method == "DELETE" and not key and bucket and not query:
            shutil.rmtree(self.store.data / bucket, ignore_errors=True)

    def _exists(self, bucket: str, key: str) -> bool:
        try:
            self.client.head_object(Bucket=bucket, Key=key)
            return True
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return False
            raise


def _client(port: int):
    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(retries={"max_attempts": 5}, max_pool_connections=16),
    )


def restore(store: Store, moto) -> int:
    """Load every object of the store into moto, through a private port: the real
    one opens only once the bucket is whole."""
    shutil.rmtree(store.incoming, ignore_errors=True)  # what a kill -9 left mid-write
    server = make_server("127.0.0.1", 0, moto, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = _client(server.server_port)
        for bucket in sorted(p.name for p in store.data.iterdir() if p.is_dir() and not p.name.startswith(".")):
            client.create_bucket(Bucket=bucket)
        objects = store.objects()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda o: client.upload_file(str(o[2]), o[0], o[1]), objects))
        return len(objects)
    finally:
        server.shutdown()
        server.server_close()


def serve(data: Path, host: str, port: int) -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    data.mkdir(parents=True, exist_ok=True)
    store = Store(data)
    moto = create_backend_app("s3")
    count = restore(store, moto)
    server = make_server(host, port, None, threaded=True)
    server.app = WriteThrough(moto, store, _client(server.server_port))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"S3 (moto) on {host}:{server.server_port}, {count} objects restored from {data}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="s3_store", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["server"])
    parser.add_argument("data", type=Path, nargs="?", default=Path("/data"), help="the data folder")
    parser.add_argument("--address", default=":9000", help="HOST:PORT to listen on (no host: every interface)")
    args, _ = parser.parse_known_args(argv)  # MinIO's other options (--console-address) do not apply
    host, _, port = args.address.rpartition(":")
    serve(args.data, host or "0.0.0.0", int(port))


if __name__ == "__main__":
    main()
