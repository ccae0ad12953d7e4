//! moat-supervisor: runs images from the store as locked-down sandboxes.
//!
//! Process tree: supervisor (`sandbox::supervise`, may run threads: gateway,
//! later tokio) -> launcher (`launcher::launch`, a single-threaded re-exec of
//! moat, the only caller of libcontainer) -> sandbox init (`executor`:
//! Landlock, then seccomp, then exec) -> agent.
pub mod credentials;
pub mod doctor;
pub mod executor;
pub mod gateway;
pub mod host_vars;
pub mod inference;
pub mod landlock;
pub mod launcher;
pub mod layers;
pub mod netns;
pub mod netpolicy;
pub mod policy;
pub mod policy_import;
pub mod redact;
pub mod rootfs;
pub mod sandbox;
pub mod seccomp;
pub mod snapshot;
pub mod spec;
pub mod state;
pub mod tty;

pub use policy::Policy;
