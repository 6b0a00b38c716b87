#!/usr/bin/env bash
# Starts or stops buttervolume, a real third-party Docker volume plugin, on a
# loop-mounted btrfs, for Dory's integration tests.
#
#   scripts/buttervolume.sh start   # installs what is missing, starts it, prints the socket path
#   scripts/buttervolume.sh stop    # stops it, unmounts, detaches the loop device
#
# Needs root (loop devices, mount). State lives in $DORY_BUTTERVOLUME_DIR
# (default /tmp/dory-buttervolume); the venv in $DORY_BUTTERVOLUME_VENV
# (default ~/.cache/dory/venv-buttervolume-3.13).
set -euo pipefail

DIR=${DORY_BUTTERVOLUME_DIR:-/tmp/dory-buttervolume}
VENV=${DORY_BUTTERVOLUME_VENV:-$HOME/.cache/dory/venv-buttervolume-3.13}
VERSION=3.13
SOCKET=$DIR/run/btrfs.sock

log() { echo "buttervolume.sh: $*" >&2; }

install() {
  if ! command -v mkfs.btrfs >/dev/null || ! command -v btrfs >/dev/null; then
    log "installing btrfs-progs"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq btrfs-progs >/dev/null
  fi
  if [ ! -x "$VENV/bin/buttervolume" ]; then
    log "installing buttervolume $VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "buttervolume==$VERSION"
  fi
}

stop() {
  if [ -f "$DIR/bv.pid" ]; then
    kill "$(cat "$DIR/bv.pid")" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$(cat "$DIR/bv.pid")" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$(cat "$DIR/bv.pid")" 2>/dev/null || true
    rm -f "$DIR/bv.pid"
  fi
  if mountpoint -q "$DIR/root" 2>/dev/null; then
    umount "$DIR/root" || umount -l "$DIR/root"
  fi
  if [ -f "$DIR/bv.img" ]; then
    for loop in $(losetup -j "$DIR/bv.img" -O NAME -n 2>/dev/null); do losetup -d "$loop" || true; done
  fi
  rm -rf "$DIR"
}

start() {
  [ "$(id -u)" = 0 ] || { log "needs root (loop device and mount)"; exit 1; }
  install
  stop
  mkdir -p "$DIR/root" "$DIR/run"
  truncate -s 1G "$DIR/bv.img"
  mkfs.btrfs -q -f "$DIR/bv.img" >/dev/null
  loop=$(losetup --find --show "$DIR/bv.img")
  mount -t btrfs "$loop" "$DIR/root"
  BUTTERVOLUME_VOLUMES_PATH=$DIR/root/volumes/ \
  BUTTERVOLUME_SNAPSHOTS_PATH=$DIR/root/snapshots/ \
  BUTTERVOLUME_TEST_REMOTE_PATH=$DIR/root/received/ \
  BUTTERVOLUME_SCHEDULE=$DIR/run/schedule.csv \
  BUTTERVOLUME_SOCKET=$SOCKET \
  BUTTERVOLUME_RUNPATH=$DIR/run \
  BUTTERVOLUME_LOGLEVEL=DEBUG \
    setsid "$VENV/bin/buttervolume" run >"$DIR/bv.log" 2>&1 </dev/null &
  echo $! >"$DIR/bv.pid"
  for _ in $(seq 100); do
    if [ -S "$SOCKET" ]; then
      log "buttervolume $VERSION listening on $SOCKET (log: $DIR/bv.log)"
      echo "$SOCKET"
      return 0
    fi
    kill -0 "$(cat "$DIR/bv.pid")" 2>/dev/null || break
    sleep 0.1
  done
  log "buttervolume did not come up; its log:"
  cat "$DIR/bv.log" >&2 || true
  stop
  exit 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  install) install ;;
  *) echo "usage: $0 start|stop|install" >&2; exit 2 ;;
esac
