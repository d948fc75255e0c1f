"""An S3 server for CI images: moto behind the health endpoint MinIO serves, so
testcontainers' MinioContainer (which waits on /minio/health/live) runs it unchanged.
No MinIO binary can be installed without a registry here; moto ignores credentials."""

import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

moto = DomainDispatcherApplication(create_backend_app)


def app(environ, start_response):
    if environ.get("PATH_INFO", "").startswith("/minio/health/"):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    return moto(environ, start_response)


if __name__ == "__main__":
    # Accepts MinIO's command line (`server /data --address :9000`); only the port matters.
    port = 9000
    if "--address" in sys.argv:
        port = int(sys.argv[sys.argv.index("--address") + 1].rsplit(":", 1)[1])
    run_simple("0.0.0.0", port, app, threaded=True)
