fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    println!("cargo:rerun-if-changed=link.ld");
    for a in ["-nostartfiles", "-nostdlib", "-static", "-no-pie", "-Wl,--no-dynamic-linker", "-Wl,--build-id=none"] {
        println!("cargo:rustc-link-arg-bins={a}");
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{dir}/link.ld");
}
