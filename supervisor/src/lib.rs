//! moat-supervisor: runs images from the store as locked-down sandboxes.
//!
//! Rooms by layer (HACKING.md draws them):
//! - `policy/`: the one typed policy (schema, network rules, host variables,
//!   OpenShell import). A leaf: it imports no other room but `yaml`.
//! - `sandbox/`: the supervisor side of a sandbox, where threads are allowed
//!   (state, spec, netns, the gateway's start, doctor).
//! - `launch/`: the single-threaded launcher and sandbox init (fork,
//!   libcontainer, rootfs, Landlock, seccomp, tty). It imports nothing that
//!   starts threads: `scripts/check-imports.py` enforces it.
//! - `gateway/`: the egress gateway and the inference relay (tokio).
//! - `secrets/`: the credential store and the redactor.
//! - `layers`: the unpacked-layer cache, a leaf both sides read.
//! - `logging`: how every moat process logs (filter, redacting writer).
//! - `unix_addr`: Unix sockets at paths longer than `sun_path`, a leaf.
//! - `visible`: text escaped for an operator's terminal, a leaf.
//! - `yaml`: bounds on YAML input checked before the parser, a leaf.
//!
//! Process tree: supervisor (`sandbox::supervise`, runs threads: gateway,
//! tokio) -> launcher (`launch::launch`, the only caller of libcontainer,
//! a single-threaded fork of the supervisor made before its first thread)
//! -> sandbox init (`launch::executor`: Landlock, then seccomp, then exec)
//! -> agent.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(unreachable_pub)]
#![deny(clippy::undocumented_unsafe_blocks)]
pub mod gateway;
pub mod launch;
pub(crate) mod layers;
pub mod logging;
pub mod policy;
pub mod sandbox;
pub mod secrets;
mod sys;
pub mod unix_addr;
pub mod visible;
pub mod yaml;

pub use policy::Policy;
