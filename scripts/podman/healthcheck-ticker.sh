#!/bin/sh
# Podman schedules container healthchecks with systemd timers; where there is no
# systemd (CI here), nothing runs them and every container stays "starting", so
# compose's `depends_on: condition: service_healthy` would wait forever. This loop
# plays systemd's part: it runs the healthcheck of every running container that has
# one, every few seconds. Started (once, with a pid file) by setup.sh.
interval=${CV_YOLO_HEALTHCHECK_INTERVAL:-2}
while :; do
  podman ps --format '{{.ID}} {{.Status}}' 2>/dev/null | while read -r id status; do
    case "$status" in
      *"(starting)"*|*"(healthy)"*|*"(unhealthy)"*) podman healthcheck run "$id" </dev/null >/dev/null 2>&1 || true ;;
    esac
  done
  sleep "$interval"
done
