//! Cloud metadata services by name and address: the gateway never dials
//! them whatever a policy says (`gateway::ssrf`), and `policy suggest`
//! never proposes them. One list, so the two cannot drift apart. Guards
//! against a sandbox reading the host's cloud credentials.
#![forbid(unsafe_code)]
use std::net::{Ipv4Addr, Ipv6Addr};

/// AWS/GCP/Azure/OCI (169.254.169.254), Alibaba (100.100.100.200), OCI
/// legacy (192.0.0.192).
pub const METADATA_V4: [Ipv4Addr; 3] =
    [Ipv4Addr::new(169, 254, 169, 254), Ipv4Addr::new(100, 100, 100, 200), Ipv4Addr::new(192, 0, 0, 192)];
/// AWS IPv6 (fd00:ec2::254).
pub const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
/// Their well-known names.
pub const METADATA_NAMES: &[&str] = &[
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.azure.com",
];
