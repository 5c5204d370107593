//! herald: announces Kubernetes Service IPs over BGP through a gobgpd sidecar.
//!
//! Data flows one way:
//! source ([`source`]) → cluster model ([`cluster`]) → [`planner`] → [`plan::Plan`] on a watch
//! channel → the gobgpd reconciler ([`gobgp`]) and the API server ([`api`]), which only read it.

pub mod api;
pub mod brake;
pub mod brake_events;
pub mod cluster;
pub mod config;
pub mod events;
pub mod gobgp;
pub mod guard;
pub mod lease;
pub mod metrics;
pub mod plan;
pub mod planner;
pub mod run;
pub mod scale;
pub mod selector;
pub mod source;
