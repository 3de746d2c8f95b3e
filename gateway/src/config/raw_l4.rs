//! `[[l4_services]]` exactly as written: L4 VIPs balanced in XDP (see `crate::l4`).

use serde::Deserialize;

use super::raw::RawHealthCheck;

/// `[[l4_services]]`: a VIP whose packets the XDP program balances over `targets`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawL4Service {
    pub name: String,
    /// The virtual address clients connect to (routed to this appliance).
    pub vip: String,
    /// Destination port; absent: every port of the VIP.
    pub port: Option<u16>,
    /// `tcp` or `udp`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// `ipip` (the only mode: IPv4/IPv6 in IPv4, IPv4/IPv6 in IPv6).
    #[serde(default = "default_forwarding")]
    pub forwarding: String,
    /// `5-tuple` (addresses, ports, protocol) or `3-tuple` (no ports).
    #[serde(default = "default_flow_hash")]
    pub flow_hash: String,
    /// Slots of the Maglev table: a prime, at least 100 per target.
    #[serde(default = "default_table_size")]
    pub table_size: u32,
    pub targets: Vec<RawL4Target>,
    /// Probes of every target; `port` defaults to the service's port.
    pub health_check: Option<RawHealthCheck>,
}

/// One target of an L4 service: an address (the service's port is kept).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawL4Target {
    pub addr: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_protocol() -> String {
    "tcp".into()
}

fn default_forwarding() -> String {
    "ipip".into()
}

fn default_flow_hash() -> String {
    "5-tuple".into()
}

/// The default Maglev table size (a prime).
pub fn default_table_size() -> u32 {
    65_537
}

fn default_weight() -> u32 {
    1
}

/// The default outer IPv4 source prefix of encapsulated packets.
pub fn default_tunnel_source_v4() -> String {
    "172.16.0.0/16".into()
}

/// The default outer IPv6 source prefix of encapsulated packets.
pub fn default_tunnel_source_v6() -> String {
    "fd00:4c34::/96".into()
}
