//! moat-supervisor: runs images from the store as locked-down sandboxes.
//!
//! Process tree: supervisor (`sandbox::supervise`, runs threads: gateway,
//! tokio) -> launcher (`launcher::launch`, the only caller of libcontainer,
//! a single-threaded fork of the supervisor made before its first thread)
//! -> sandbox init (`executor`: Landlock, then seccomp, then exec) -> agent.
pub mod cgroup_warm;
pub mod credentials;
pub mod doctor;
pub mod executor;
pub mod forked_launcher;
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
pub mod sandbox_net;
pub mod seccomp;
pub mod snapshot;
pub mod spec;
pub mod state;
pub mod tty;

pub use policy::Policy;
