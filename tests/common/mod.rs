//! Integration-test fixture: the one place that owns external processes.
//!
//! A [`Cluster`] is a fresh temporary directory holding
//! - a PostgreSQL primary (`pg1`) and N streaming standbys (`pg2`, `pg3`, ...),
//!   each on its own loopback port, with `log_connections=on`;
//! - a real PgBouncer whose config file is the MANAGED SYMLINK
//!   `<tmp>/pgbouncer.ini -> <tmp>/nodes/<node>.ini`, one precooked node file per
//!   PostgreSQL instance (`<tmp>/nodes/pg1.ini`, ...);
//! - helpers to break things (stop, kill -9, SIGSTOP, promote, PgBouncer down/up), to
//!   query every server directly and through PgBouncer, and to run the daemon ([`Daemon`]).
//!
//! Node numbers are 1-based and match the node names: node 1 = `pg1` = the initial
//! primary, node 2 = `pg2` = first standby, ...
//!
//! The directory is `<base>/rebouncer-it-<pid>-XXXXXX`, base = [`base_dir`]: `/dev/shm`
//! when it is a tmpfs with >= 1 GiB free (4x faster start-up than ext4 here), else
//! `$TMPDIR`/`/tmp`; `REBOUNCER_TEST_TMPDIR` overrides.
//!
//! Environment overrides: `REBOUNCER_PG_BIN` (the PostgreSQL bin directory, default
//! `/usr/lib/postgresql/15/bin`), `REBOUNCER_PGBOUNCER` (the PgBouncer binary, default
//! `/usr/sbin/pgbouncer`; both read in one place, `process.rs`), `REBOUNCER_BIN` (daemon binary
//! when not built by cargo as an integration test), `REBOUNCER_KEEP_TMP=1`,
//! `REBOUNCER_TEST_TMPDIR`, `REBOUNCER_FIXTURE_TRACE=1` (print start-up phase timings).
//!
//! No test-harness-only assumptions: failures are plain panics with a message, so the
//! module can be `#[path]`-included by an example or a bench.
#![allow(dead_code)]

pub mod etcd;
pub mod patroni;

mod certs;
mod clients;
mod cluster;
mod daemon;
mod pgbouncer;
mod postgres;
mod process;
mod scenario;

// Each test uses a part of the fixture; the rest of these re-exports is unused there.
#[allow(unused_imports)]
pub use certs::*;
#[allow(unused_imports)]
pub use clients::*;
#[allow(unused_imports)]
pub use cluster::*;
#[allow(unused_imports)]
pub use daemon::*;
#[allow(unused_imports)]
pub use pgbouncer::*;
#[allow(unused_imports)]
pub use postgres::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use scenario::*;
