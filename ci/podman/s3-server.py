"""An S3 server for CI images: moto behind the health endpoint MinIO serves, so
testcontainers' MinioContainer (which waits on /minio/health/live) runs it
unchanged. No MinIO binary can be installed without a registry here.

moto keeps objects in memory; like MinIO, this server keeps them in its data
folder: loaded at start, and every object written through as it is stored
(containers are often removed with SIGKILL, so nothing can wait for shutdown).
moto ignores credentials."""

import signal
import sys
import threading
from pathlib import Path
from urllib.parse import unquote

import boto3
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

moto = DomainDispatcherApplication(create_backend_app)


class Persisting:
    """WSGI middleware: after moto stored, completed or deleted an object, mirror it
    to data/<bucket>/<key>."""

    def __init__(self, data: Path):
        self.data = data
        self.s3 = None  # a boto3 client of this server, set once it listens

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith("/minio/health/"):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]
        status = {}

        def capture(line, headers, exc_info=None):
            status["code"] = int(line.split()[0])
            return start_response(line, headers, exc_info)

        body = list(moto(environ, capture))
        if 200 <= status.get("code", 500) < 300:
            self.mirror(environ)
        return body

    def mirror(self, environ) -> None:
        method, query = environ["REQUEST_METHOD"], environ.get("QUERY_STRING", "")
        bucket, _, key = unquote(environ.get("PATH_INFO", "")).lstrip("/").partition("/")
        if not bucket or self.s3 is None:
            return
        target = self.data / bucket / key
        if method == "PUT" and not key:
            target.mkdir(parents=True, exist_ok=True)
        elif method == "DELETE" and key:
            target.unlink(missing_ok=True)
        elif key and (method == "PUT" and "partNumber" not in query or method == "POST" and "uploadId" in query):
            target.parent.mkdir(parents=True, exist_ok=True)
            self.s3.download_file(bucket, key, str(target))


def main() -> None:
    # MinIO's command line: `server /data --address :9000 [...]`.
    args = sys.argv[1:]
    data = Path(args[1]) if len(args) > 1 and args[0] == "server" else Path("/data")
    port = int(args[args.index("--address") + 1].rsplit(":", 1)[1]) if "--address" in args else 9000
    app = Persisting(data)
    server = make_server("0.0.0.0", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                      aws_access_key_id="local", aws_secret_access_key="local")
    for bucket in (p for p in data.iterdir() if p.is_dir()) if data.is_dir() else ():
        s3.create_bucket(Bucket=bucket.name)
        for path in (p for p in bucket.rglob("*") if p.is_file()):
            s3.upload_file(str(path), bucket.name, path.relative_to(bucket).as_posix())
    app.s3 = s3  # from here on, writes are mirrored (the restore above needs none)
    print(f"S3 (moto) on :{port}, data in {data}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.shutdown()


if __name__ == "__main__":
    main()
