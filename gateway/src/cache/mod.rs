//! The response cache: per worker, in memory, opt-in per route. [`policy`] holds the
//! RFC 9111 rules, [`store`] the bytes, [`coalesce`] the collapsing of concurrent misses;
//! the request path that uses them is `proxy::cached`.

pub mod coalesce;
pub mod entry;
pub mod policy;
pub mod store;

pub use self::{coalesce::Flights, store::Store};
