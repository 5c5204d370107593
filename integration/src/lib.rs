//! Test support for herald: a network-namespace BGP lab with gobgpd and BIRD 2.

pub mod fake_apiserver;
pub mod lab;
pub mod lab_herald;
pub mod process;
