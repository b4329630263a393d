//! Per-address limits on live connections (QUIC and WebRTC): how many handshakes one IP address
//! may have open at once, and how many connections in all.
//!
//! A connection takes an [`AddressPermit`] before any work is done for it (QUIC: on the first
//! packet; WebRTC: on the signalling request); the permit counts as half-open until the
//! handshake's welcome is sent, and is given back when the connection ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Limits per address.
#[derive(Debug, Clone, Copy)]
pub struct AddressConfig {
    /// Handshakes not yet welcomed, per IP address. Default 32.
    pub max_half_open_per_address: usize,
    /// Connections (half-open included), per IP address. Default 256.
    pub max_connections_per_address: usize,
}

impl Default for AddressConfig {
    fn default() -> Self {
        AddressConfig { max_half_open_per_address: 32, max_connections_per_address: 256 }
    }
}

/// Why an address was refused (the `reason` label of `theta_live_address_refusals_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AddressRefusal {
    /// Too many handshakes open from the address.
    HalfOpen,
    /// Too many connections from the address.
    Connections,
}

impl AddressRefusal {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            AddressRefusal::HalfOpen => "half_open",
            AddressRefusal::Connections => "connections",
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Open {
    half_open: usize,
    total: usize,
}

/// The open connections per address.
#[derive(Debug)]
pub struct AddressLimits {
    config: AddressConfig,
    open: Mutex<HashMap<IpAddr, Open>>,
}

impl AddressLimits {
    /// Limits with `config`.
    pub fn new(config: AddressConfig) -> Arc<AddressLimits> {
        Arc::new(AddressLimits { config, open: Mutex::default() })
    }

    /// A permit for a new connection from `ip`, or why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<AddressPermit, AddressRefusal> {
        let mut open = self.open.lock().expect("address lock");
        let o = open.entry(ip).or_default();
        if o.total >= self.config.max_connections_per_address {
            return Err(AddressRefusal::Connections);
        }
        if o.half_open >= self.config.max_half_open_per_address {
            return Err(AddressRefusal::HalfOpen);
        }
        o.half_open += 1;
        o.total += 1;
        Ok(AddressPermit { limits: self.clone(), ip, half_open: true })
    }

    /// Half-open handshakes and connections from `ip` now.
    pub fn open(&self, ip: IpAddr) -> (usize, usize) {
        self.open.lock().expect("address lock").get(&ip).map_or((0, 0), |o| (o.half_open, o.total))
    }
}

/// One connection's place in its address's limits; given back when dropped.
#[derive(Debug)]
pub struct AddressPermit {
    limits: Arc<AddressLimits>,
    ip: IpAddr,
    half_open: bool,
}

impl AddressPermit {
    /// The handshake finished: the connection no longer counts as half-open.
    pub fn established(&mut self) {
        if std::mem::take(&mut self.half_open) {
            let mut open = self.limits.open.lock().expect("address lock");
            if let Some(o) = open.get_mut(&self.ip) {
                o.half_open -= 1;
            }
        }
    }
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().expect("address lock");
        if let Some(o) = open.get_mut(&self.ip) {
            o.total -= 1;
            if self.half_open {
                o.half_open -= 1;
            }
            if o.total == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_open_then_established_then_released() {
        let limits = AddressLimits::new(AddressConfig { max_half_open_per_address: 2, max_connections_per_address: 3 });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let mut a = limits.admit(ip).unwrap();
        let b = limits.admit(ip).unwrap();
        assert_eq!(limits.admit(ip).unwrap_err(), AddressRefusal::HalfOpen);
        assert!(limits.admit(other).is_ok(), "another address is unaffected");
        a.established();
        let c = limits.admit(ip).unwrap();
        assert_eq!(limits.open(ip), (2, 3));
        assert_eq!(limits.admit(ip).unwrap_err(), AddressRefusal::Connections);
        drop((a, b, c));
        assert_eq!(limits.open(ip), (0, 0));
    }
}
