#!/usr/bin/env bash
# Run a command with a private, real systemd-journald, as a systemd service would see it:
#   scripts/with-journald.sh CMD [ARGS...]
#
# The script re-executes itself in a private mount namespace (as root, or rootless with a
# user namespace), mounts tmpfs over /run/systemd, /run/log (and /var/log/journal when it
# exists) so that nothing of the host's journal is touched, starts journald with volatile
# storage and no rate limit, waits for its socket, runs CMD, and stops journald on exit.
# Records land in /run/log/journal inside the namespace; read them with journalctl there.
set -euo pipefail

if [ "${SECURELLM_JOURNALD_NS:-}" != "1" ]; then
  export SECURELLM_JOURNALD_NS=1
  userns=()
  [ "$(id -u)" -eq 0 ] || userns=(--map-root-user)
  exec unshare --mount --propagation private "${userns[@]}" "$0" "$@"
fi

if [ "$#" -eq 0 ]; then
  echo "usage: $0 CMD [ARGS...]" >&2
  exit 2
fi

journald=/lib/systemd/systemd-journald
[ -x "$journald" ] || { echo "with-journald: $journald not found (apt-get install systemd)" >&2; exit 1; }

mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mount -t tmpfs -o mode=0755 tmpfs /run/log
if [ -d /var/log/journal ]; then
  mount -t tmpfs -o mode=2755 tmpfs /var/log/journal
fi
mkdir -p /run/systemd/journal /run/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\nReadKMsg=no\nRateLimitBurst=0\nForwardToSyslog=no\nForwardToWall=no\nForwardToConsole=no\n' \
  >/run/systemd/journald.conf.d/test.conf

# systemd-journald takes no options: any argument would be taken as a journal namespace.
"$journald" </dev/null >/dev/null 2>&1 &
journald_pid=$!
stop_journald() {
  kill -TERM "$journald_pid" 2>/dev/null || true
  wait "$journald_pid" 2>/dev/null || true
}
trap stop_journald EXIT

for _ in $(seq 1 200); do
  [ -S /run/systemd/journal/socket ] && break
  kill -0 "$journald_pid" 2>/dev/null || { echo "with-journald: systemd-journald exited" >&2; exit 1; }
  sleep 0.05
done
[ -S /run/systemd/journal/socket ] || { echo "with-journald: no journal socket after 10 s" >&2; exit 1; }

status=0
"$@" || status=$?
exit "$status"
