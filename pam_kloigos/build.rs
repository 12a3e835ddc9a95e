//! Link flags of `pam_kloigos.so`.

fn main() {
    // A read of the shared tree that misses its deadline leaves a helper
    // thread behind, running code of this library. PAM dlclose()s modules in
    // pam_end(); if that unmapped the code under the thread, the host (sshd)
    // would crash when the thread wakes. RTLD_NODELETE semantics, fixed at
    // link time, keep the module mapped for the life of the process.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    println!("cargo:rerun-if-changed=build.rs");
}
