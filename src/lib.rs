//! rebouncer keeps a PgBouncer pointed at the one primary of a PostgreSQL
//! replication cluster. The data path reads top to bottom:
//! probe -> decide -> switch -> status.

pub mod admin;
pub mod check;
pub mod cli;
pub mod config;
pub mod conninfo;
pub mod daemon;
pub mod decide;
pub mod etcd;
pub mod events;
#[cfg(test)]
pub mod fake_bouncer;
pub mod http;
pub mod json;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod probe;
pub mod state;
pub mod status;
pub mod switch;
pub mod throttle;
