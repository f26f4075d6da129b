//! With the `python` feature: record the Python version the build is for (the C-API's struct
//! layouts are that version's), which the worker compares with the interpreter it finds at
//! run time before it loads that interpreter's libpython.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "python")]
    {
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
