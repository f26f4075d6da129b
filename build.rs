//! With the `python` feature: tell the linker where libpython lives (an rpath), so the
//! binaries load the libpython they were built against without `LD_LIBRARY_PATH`, and record
//! its version, which the worker compares with the interpreter it finds at run time.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "python")]
    {
        pyo3_build_config::add_libpython_rpath_link_args();
        let cfg = pyo3_build_config::get();
        let version = cfg.version();
        println!(
            "cargo:rustc-env=RQS_PYTHON_VERSION={}.{}",
            version.major, version.minor
        );
        println!(
            "cargo:rustc-env=RQS_PYTHON_BUILT_WITH={}",
            cfg.executable().unwrap_or("python3")
        );
    }
}
