//! rebouncer keeps a PgBouncer pointed at the one primary of a PostgreSQL
//! replication cluster. The data path reads top to bottom:
//! probe -> decide -> switch -> view -> pages.

pub mod admin;
pub mod check;
pub mod cli;
pub mod config;
pub mod conninfo;
pub mod counters;
pub mod daemon;
pub mod decide;
pub mod etcd;
pub mod etcd_settings;
pub mod events;
#[cfg(test)]
pub mod fake_bouncer;
pub mod http;
mod ini_text;
pub mod json_format;
pub mod level;
pub mod logging;
pub mod node;
pub mod node_file;
pub mod notify;
pub mod pages;
pub mod policy;
pub mod probe;
pub mod settings;
pub mod state;
pub mod switch;
pub mod throttle;
pub mod view;
