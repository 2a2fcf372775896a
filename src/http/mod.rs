//! The status web server: `/`, `/nodes`, `/nagios`, `/metrics`, `/events`, rendered from
//! the shared snapshot. `/` and `/nodes` answer JSON when asked (`Accept:
//! application/json` or `?format=json`), plain text otherwise.
//!
//! The status port is open to every local process, and the daemon shares one process
//! (one open-files limit, one thread) with the checks and the switch. So the server is
//! bounded: a fixed number of connections at a time, each closed when its client is slow
//! or idle, and only GET and HEAD. A flood of connections then waits in the kernel's
//! backlog instead of eating the descriptors a failover needs. When every slot is held,
//! the connection that has waited longest for a request gives its slot to the newest
//! one (as nginx reuses its idle connections when it runs short), so a flood of idle
//! sockets cannot keep a monitoring check from being answered.
//!
//! `routes` maps paths to pages, `server` accepts and serves connections within those
//! bounds, and `slots` keeps the connection slots and decides which one gives way.

mod routes;
mod server;
mod slots;
#[cfg(test)]
mod testing;

pub use routes::router;
pub use server::{
    BindError, HEADER_READ_TIMEOUT, MAX_CONNECTION_AGE, MAX_CONNECTIONS, bind, serve,
};
