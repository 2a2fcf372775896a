//! rebouncer keeps a PgBouncer pointed at the one primary of a PostgreSQL
//! replication cluster. The data path reads top to bottom:
//! probe -> decide -> switch -> status.

pub mod config;
pub mod conninfo;
