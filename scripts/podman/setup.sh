#!/usr/bin/env bash
# Podman as a local Docker engine for CI on a machine without Docker or a reachable
# image registry: installs Podman, serves its Docker-compatible API, and builds the
# stack's images from Debian packages (debootstrap) and PyPI. Idempotent: rootfs
# tarballs are cached in $CACHE and images already tagged are not rebuilt.
# Writes the environment the suite needs to scripts/podman/env (source it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${CV_YOLO_IMAGE_CACHE:-/var/cache/cv-yolo-images}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SOCK=/run/podman/podman.sock
MYSQL_IMAGE=localhost/cv-yolo/mariadb:bookworm
S3_IMAGE=localhost/cv-yolo/s3:bookworm
MLFLOW_IMAGE=localhost/cv-yolo/mlflow:bookworm
LOCK=$here/../../requirements/constraints.txt
# The python rootfs is cached per lock: a new lock builds a new one.
PYTHON_ROOTFS=python-$(sha256sum "$LOCK" | cut -c1-12)
mkdir -p "$CACHE"

# docker-compose (Debian's 1.29, over Podman's Docker API) rather than podman-compose
# 1.0.3, which ignores `depends_on: condition:` and `network_mode: service:`.
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null || ! command -v docker-compose >/dev/null \
   || ! command -v curl >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap docker-compose curl >/dev/null
fi

# crun and the default ulimits fail inside this sandbox ("setrlimit ... Operation not permitted").
mkdir -p /etc/containers
cat > /etc/containers/containers.conf <<'CONF'
[containers]
default_ulimits = []

[engine]
runtime = "runc"
CONF

if ! curl -sf --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; then
  mkdir -p /run/podman
  setsid podman system service --time=0 "unix://$SOCK" >"$CACHE/podman-service.log" 2>&1 < /dev/null &
  echo $! > /run/podman/cv-yolo-service.pid
  for _ in $(seq 50); do curl -sf --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1 && break; sleep 0.2; done
fi
# Without systemd nothing runs container healthchecks: a small loop does (see the script).
ticker=/run/podman/cv-yolo-healthcheck.pid
if ! { [ -f "$ticker" ] && kill -0 "$(cat "$ticker")" 2>/dev/null; }; then
  setsid "$here/healthcheck-ticker.sh" >/dev/null 2>&1 < /dev/null &
  echo $! > "$ticker"
fi

rootfs() {  # name, packages: a cached debootstrap tarball
  local name=$1 include=$2
  if [ ! -f "$CACHE/$name.tar" ]; then
    if [ ! -f "$CACHE/$name-rootfs/.debootstrapped" ]; then
      rm -rf "$CACHE/$name-rootfs"
      debootstrap --variant=minbase --include="$include" bookworm "$CACHE/$name-rootfs" "$MIRROR" >"$CACHE/$name.log"
      touch "$CACHE/$name-rootfs/.debootstrapped"
    fi
    "${@:3}"
    tar -C "$CACHE/$name-rootfs" -cf "$CACHE/$name.tar.tmp" . && mv "$CACHE/$name.tar.tmp" "$CACHE/$name.tar"
    rm -rf "$CACHE/$name-rootfs"
  fi
}

python_packages() {
  # The rootfs trusts what this host trusts for the package index (proxies included).
  local root=$CACHE/$PYTHON_ROOTFS-rootfs
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$root/tmp/host-ca.pem"
  cp "$LOCK" "$root/tmp/constraints.txt"
  # Versions from the project's lock (Debian bookworm's python is 3.11, as the lock's).
  chroot "$root" env -u PIP_FIND_LINKS PIP_CERT=/tmp/host-ca.pem REQUESTS_CA_BUNDLE=/tmp/host-ca.pem \
    SSL_CERT_FILE=/tmp/host-ca.pem pip3 install -q --break-system-packages --no-cache-dir \
    -c /tmp/constraints.txt "mlflow[auth]" pymysql cryptography boto3 "moto[server]"
  rm -f "$root/tmp/host-ca.pem" "$root/tmp/constraints.txt"
}

mariadb_datadir() {
  # The package's postinst initialised a datadir; the entrypoint must find none, as
  # in the official image, to apply the MYSQL_* variables.
  rm -rf "$CACHE/mariadb-rootfs/var/lib/mysql" && mkdir -p "$CACHE/mariadb-rootfs/var/lib/mysql"
  chroot "$CACHE/mariadb-rootfs" chown mysql:mysql /var/lib/mysql
  # compose's healthcheck speaks the official image's mysqladmin
  [ -e "$CACHE/mariadb-rootfs/usr/bin/mysqladmin" ] || ln -s mariadb-admin "$CACHE/mariadb-rootfs/usr/bin/mysqladmin"
}

base() {  # tag, tarball
  podman image exists "$1" || podman import "$2" "$1" >/dev/null
}

start=$(date +%s)
rootfs mariadb mariadb-server mariadb_datadir
rootfs "$PYTHON_ROOTFS" python3,python3-pip,python3-venv,ca-certificates python_packages
base localhost/cv-yolo/mariadb-base:bookworm "$CACHE/mariadb.tar"
# Tagged per lock too, so that the layers below are rebuilt over a new base.
base "localhost/cv-yolo/python-base:$PYTHON_ROOTFS" "$CACHE/$PYTHON_ROOTFS.tar"
podman tag "localhost/cv-yolo/python-base:$PYTHON_ROOTFS" localhost/cv-yolo/python-base:bookworm
# The small files on top are layers, rebuilt from cache in a second when unchanged.
podman build -q -f "$here/Containerfile.mariadb" -t "$MYSQL_IMAGE" "$here" >/dev/null
# The S3 image runs the library's own store, one file that imports nothing from the package.
s3_context=$(mktemp -d)
cp "$here/Containerfile.s3" "$here/../../src/mlflow_cv_yolo/stack/s3_store.py" "$s3_context/"
podman build -q -f "$s3_context/Containerfile.s3" -t "$S3_IMAGE" "$s3_context" >/dev/null
rm -rf "$s3_context"
podman build -q -f "$here/Containerfile.mlflow" -t "$MLFLOW_IMAGE" "$here" >/dev/null

cat > "$here/env" <<ENV
export DOCKER_HOST=unix://$SOCK
export TESTCONTAINERS_RYUK_DISABLED=true
export TESTCONTAINERS_CONNECTION_MODE=docker_host
export TESTCONTAINERS_HOST_OVERRIDE=127.0.0.1
export CV_YOLO_MYSQL_IMAGE=$MYSQL_IMAGE
export CV_YOLO_S3_IMAGE=$S3_IMAGE
export CV_YOLO_MLFLOW_IMAGE=$MLFLOW_IMAGE
ENV
# compose.yaml's S3 healthcheck defaults to MinIO's `mc ready local`; the CI image has no mc.
printf '%s\n' "export CV_YOLO_S3_HEALTHCHECK=\"python3 -c \\\"import urllib.request; urllib.request.urlopen('http://127.0.0.1:9000/minio/health/live')\\\"\"" >> "$here/env"
echo "podman ready in $(( $(date +%s) - start )) s; images: $MYSQL_IMAGE $S3_IMAGE $MLFLOW_IMAGE; environment: $here/env"
cat "$here/env"
