//! `containerd-shim-moat-v1`: moat's containerd shim v2 (runtime type
//! `io.containerd.moat.v1`); all of it is in the `moat-shim` crate.
fn main() {
    std::process::exit(moat_shim::main());
}
