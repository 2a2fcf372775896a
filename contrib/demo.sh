#!/usr/bin/env bash
# rebouncer demo: builds rebouncer, sets up a throw-away PostgreSQL primary + 2
# streaming standbys + PgBouncer on loopback ports of their own, and walks through a
# failover and an old primary coming back, narrating each step. Then it stops and removes everything.
#
# Usage (on Debian, as root or as a user with sudo):  bash contrib/demo.sh
#
# It installs what is missing with apt-get (pgbouncer, postgresql-15, libssl-dev,
# pkg-config, ...); Rust 1.85 or later must be there already (https://rustup.rs).
# The demo itself is tests/demo.rs, run as an ignored test of the integration-test
# fixture (tests/common): `cargo test --release --test demo -- --ignored --nocapture`.
# Everything it starts lives in one directory this script creates; on exit, also on
# Ctrl-C, every process whose command line mentions it is stopped and it is removed.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# --- what the demo needs --------------------------------------------------------------
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "run this as root, or install sudo"
    sudo=(sudo)
fi

# Other builds: REBOUNCER_PG_BIN (a PostgreSQL bin directory) and REBOUNCER_PGBOUNCER (a
# pgbouncer binary), as for the tests; the packages are installed only for the defaults.
pg_bin=${REBOUNCER_PG_BIN:-/usr/lib/postgresql/15/bin}
pgbouncer=${REBOUNCER_PGBOUNCER:-/usr/sbin/pgbouncer}
need=()
for prog in "$pg_bin/postgres" "$pg_bin/psql" "$pgbouncer"; do
    [ -x "$prog" ] && continue
    case $prog in
    /usr/lib/postgresql/15/bin/postgres) need+=(postgresql-15) ;;
    /usr/lib/postgresql/15/bin/psql) need+=(postgresql-client-15) ;;
    /usr/sbin/pgbouncer) need+=(pgbouncer) ;;
    *) die "$prog is missing or not executable (REBOUNCER_PG_BIN=$pg_bin, REBOUNCER_PGBOUNCER=$pgbouncer)" ;;
    esac
done
dpkg-query -W -f='${Status}' libssl-dev 2>/dev/null | grep -q "install ok installed" || need+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v pgrep >/dev/null 2>&1 || need+=(procps)
if [ ${#need[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "missing ${need[*]}, and no apt-get to install them"
    say "installing ${need[*]}"
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    say "note: Debian's packages start their own pgbouncer/postgresql services; the demo does not use them"
fi

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH=$HOME/.cargo/bin:$PATH
fi
command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install Rust 1.85 or later with https://rustup.rs (Debian's cargo is too old)"

# --- build ------------------------------------------------------------------------------
say "building (cargo test --release --test demo --no-run)"
cargo test --release --locked --test demo --no-run

# --- the demo's directory and its clean-up ------------------------------------------
# /dev/shm when it has room (a cluster starts several times faster there), else $TMPDIR.
base=${TMPDIR:-/tmp}
if [ -d /dev/shm ] && [ -w /dev/shm ] &&
    [ "$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')" -ge 1048576 ] 2>/dev/null; then
    base=/dev/shm
fi
dir=$(mktemp -d "$base/rebouncer-demo.XXXXXX")
# As root the fixture runs the servers as the postgres user, in subdirectories it hands
# over to that user: it must be able to traverse this one (mktemp made it 0700).
chmod 0755 "$dir"

child=
cleaned=
cleanup() {
    [ -n "$cleaned" ] && return
    cleaned=1
    trap '' INT TERM
    # The test process first (it runs in its own process group, see below), so that it
    # starts nothing new; it would tear the cluster down itself, but a signal kills it
    # before it can.
    if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
        kill -TERM -- "-$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    if [ -n "$(pgrep -f "$dir" || true)" ]; then
        echo "demo: stopping what is left in $dir"
        # PostgreSQL: immediate shutdown (SIGQUIT), which also removes its shared memory;
        # everything else (PgBouncer, rebouncer, pg_ctl): SIGTERM.
        for pidfile in "$dir"/*/*/postmaster.pid; do
            [ -f "$pidfile" ] || continue
            pid=$(head -n 1 "$pidfile")
            kill -CONT "$pid" 2>/dev/null || true
            kill -QUIT "$pid" 2>/dev/null || true
        done
        pkill -TERM -f "$dir" 2>/dev/null || true
        for _ in $(seq 1 100); do
            [ -z "$(pgrep -f "$dir" || true)" ] && break
            sleep 0.1
        done
        pkill -KILL -f "$dir" 2>/dev/null || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

# --- run ----------------------------------------------------------------------------------
say "running the demo in $dir"
# In the background, in a session of its own: `wait` returns at once when a signal
# arrives (a foreground command would delay the trap until it ends), and the clean-up
# can signal the whole process group.
REBOUNCER_TEST_TMPDIR=$dir setsid cargo test --release --locked --test demo -- --ignored --nocapture &
child=$!
status=0
wait "$child" || status=$?
child=
cleanup
exit "$status"
