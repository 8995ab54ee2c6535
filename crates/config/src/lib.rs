//! zmesh-config: Istio and Kubernetes YAML into typed, validated resources.
//!
//! Flow: file → [`yaml`] tree with positions → per-kind readers (validation as Istio does it)
//! → [`Config`], with a [`Diagnostic`] for every problem, each naming file:line:column, the
//! object, the field path, and what to do.

pub mod authn;
pub mod authz;
mod decode;
pub mod diag;
pub mod kube;
mod load;
pub mod mesh;
pub mod meta;
pub mod networking;
pub mod telemetry;
pub mod yaml;

pub use decode::Spanned;
pub use diag::{Diagnostic, ObjectRef, Origin, Severity};
pub use load::{Config, FileKind, Loaded, Loader, ParsedFile, SourceDocument, load_paths, load_str, yaml_files};
pub use zmesh_http::PathNormalization;
