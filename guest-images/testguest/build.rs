//! Links the test guest as a freestanding static ELF at 1 MiB (link.ld), with the host
//! target's toolchain: no C runtime, no libc, no dynamic linker, not position-independent
//! (the VMM loads PT_LOAD segments at their physical addresses and relocates nothing).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    println!("cargo:rerun-if-changed=link.ld");
    for a in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--no-dynamic-linker",
        "-Wl,--build-id=none",
        // rustc asks for RELRO; without a dynamic loader it would only add a header.
        "-Wl,-z,norelro",
    ] {
        println!("cargo:rustc-link-arg-bins={a}");
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{dir}/link.ld");
}
