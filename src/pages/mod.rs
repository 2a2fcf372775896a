//! The pages rendered from the published view ([`crate::view`]): each module one kind of
//! output, all pure (the caller passes the time).

pub mod format;
pub mod json;
pub mod metrics;
pub mod nagios;
pub mod text;
