//! zmesh-proxy: the data plane.
//!
//! Today: the workload's identity — fetching its SVID from the control plane's signing
//! service and rotating it, driven by time, so a CA outage shorter than half the certificate
//! lifetime never causes a failure. The listeners, HBONE and authorization come with the proxy
//! work.

pub mod admin;
pub mod capture;
pub mod hbone;
pub mod http2;
pub mod identity;
pub mod l7;
pub mod local;
pub mod metrics;
pub mod net;
pub mod run;
pub mod workload;
